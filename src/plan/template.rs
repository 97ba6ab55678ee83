//! Template rendering of spec strings (minijinja). The context holds only
//! `vars.*` and `platform.*`: there is no access to the process environment,
//! so a build is hermetic. An undefined variable is an error that names it.

use minijinja::{Environment, UndefinedBehavior, Value};
use std::collections::BTreeMap;

use crate::oci::Platform;

/// What rendering needs: the variables and, for per-platform strings, the platform.
#[derive(Clone, Debug)]
pub struct TemplateContext {
    vars: BTreeMap<String, String>,
    platform: Option<BTreeMap<&'static str, String>>,
}

/// A template that failed to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateFailure {
    /// A variable that is not defined (dotted name) and a close one, if any.
    Undefined {
        /// The variable, e.g. `vars.versoin`.
        name: String,
        /// A defined variable with a close name.
        suggestion: Option<String>,
    },
    /// Any other template error (syntax, filter, ...).
    Other(String),
}

impl TemplateContext {
    /// A context without a platform (tags, the index's annotations, the default base).
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        TemplateContext {
            vars,
            platform: None,
        }
    }

    /// The same variables with a platform.
    pub fn with_platform(&self, p: &Platform) -> Self {
        let mut m = BTreeMap::new();
        m.insert("os", p.os.clone());
        m.insert("arch", p.architecture.clone());
        m.insert("variant", p.variant.clone().unwrap_or_default());
        m.insert("string", p.to_string());
        TemplateContext {
            vars: self.vars.clone(),
            platform: Some(m),
        }
    }

    fn defined_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.vars.keys().map(|k| format!("vars.{k}")).collect();
        if let Some(p) = &self.platform {
            names.extend(p.keys().map(|k| format!("platform.{k}")));
        }
        names
    }

    fn is_defined(&self, dotted: &str) -> bool {
        let mut parts = dotted.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("vars"), None, _) => true,
            (Some("vars"), Some(k), None) => self.vars.contains_key(k),
            (Some("platform"), None, _) => self.platform.is_some(),
            (Some("platform"), Some(k), None) => {
                self.platform.as_ref().is_some_and(|p| p.contains_key(k))
            }
            _ => false,
        }
    }

    /// Renders `text`; strings without template syntax come back unchanged.
    pub fn render(&self, text: &str) -> Result<String, TemplateFailure> {
        if !(text.contains("{{") || text.contains("{%") || text.contains("{#")) {
            return Ok(text.to_string());
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let tmpl = env
            .template_from_str(text)
            .map_err(|e| TemplateFailure::Other(describe(&e)))?;
        let mut undefined: Vec<String> = tmpl
            .undeclared_variables(true)
            .into_iter()
            .filter(|n| !self.is_defined(n))
            .collect();
        undefined.sort();
        if let Some(name) = undefined.into_iter().next() {
            let suggestion = self
                .defined_names()
                .into_iter()
                .map(|d| (strsim::jaro_winkler(&name, &d), d))
                .filter(|(s, _)| *s > 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, d)| d);
            return Err(TemplateFailure::Undefined { name, suggestion });
        }
        let ctx = Value::from_serialize(&Ctx {
            vars: &self.vars,
            platform: self.platform.as_ref(),
        });
        tmpl.render(ctx)
            .map_err(|e| TemplateFailure::Other(describe(&e)))
    }
}

#[derive(serde::Serialize)]
struct Ctx<'a> {
    vars: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a BTreeMap<&'static str, String>>,
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        let mut vars = BTreeMap::new();
        vars.insert("version".to_string(), "1.4.2".to_string());
        TemplateContext::new(vars).with_platform(&"linux/arm64/v8".parse().unwrap())
    }

    #[test]
    fn renders_vars_and_platform() {
        let c = ctx();
        assert_eq!(
            c.render("{{ vars.version }}-{{ platform.arch }}{{ platform.variant }} {{ platform.string }}\n").unwrap(),
            "1.4.2-arm64v8 linux/arm64/v8\n"
        );
        assert_eq!(c.render("plain {text}").unwrap(), "plain {text}");
    }

    #[test]
    fn undefined_variable_is_named() {
        let c = ctx();
        assert_eq!(
            c.render("{{ vars.versoin }}"),
            Err(TemplateFailure::Undefined {
                name: "vars.versoin".into(),
                suggestion: Some("vars.version".into())
            })
        );
        let no_platform = TemplateContext::new(BTreeMap::new());
        assert!(matches!(
            no_platform.render("{{ platform.arch }}"),
            Err(TemplateFailure::Undefined { name, .. }) if name == "platform.arch"
        ));
        assert!(matches!(
            c.render("{{ env.HOME }}"),
            Err(TemplateFailure::Undefined { .. })
        ));
        assert!(matches!(
            c.render("{{ vars.version "),
            Err(TemplateFailure::Other(_))
        ));
    }
}
