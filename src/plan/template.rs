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
    /// The template went past a limit (steps, output size, memory).
    Limit(String),
}

/// Most steps one template may take (minijinja's fuel).
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Largest value a template may render to, in bytes.
pub const MAX_RENDERED: usize = 16 * 1024 * 1024;

/// Most memory one template's rendering may hold, in bytes (where the
/// binary installs the budgeting allocator; see [`crate::budget`]).
pub const TEMPLATE_MEMORY: usize = 64 * 1024 * 1024;

/// An `io::Write` into a string buffer that refuses to grow past a bound.
struct Bounded {
    out: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_RENDERED {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered value too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    /// Rendering is bounded in steps ([`TEMPLATE_FUEL`]), output
    /// ([`MAX_RENDERED`]) and memory ([`TEMPLATE_MEMORY`]).
    pub fn render(&self, text: &str) -> Result<String, TemplateFailure> {
        if !(text.contains("{{") || text.contains("{%") || text.contains("{#")) {
            return Ok(text.to_string());
        }
        let (me, text) = (self.clone(), text.to_string());
        crate::budget::run(TEMPLATE_MEMORY, move || me.render_now(&text)).unwrap_or_else(|e| {
            Err(TemplateFailure::Limit(format!(
                "rendering it needed more than {} MiB of memory (the memory budget)",
                e.limit >> 20
            )))
        })
    }

    fn render_now(&self, text: &str) -> Result<String, TemplateFailure> {
        ENV.with(|env| self.render_in(env, text))
    }

    fn render_in(&self, env: &Environment<'static>, text: &str) -> Result<String, TemplateFailure> {
        let tmpl = env
            .template_from_str(text)
            .map_err(|e| TemplateFailure::Other(describe(&e)))?;
        let mut undefined: Vec<String> = tmpl
            .undeclared_variables(true)
            .into_iter()
            .filter(|n| !self.is_defined(n))
            .filter(|n| !env.globals().any(|(g, _)| g == n.as_str()))
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
        let mut out = Bounded {
            out: Vec::new(),
            overflowed: false,
        };
        let rendered = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
        match rendered {
            Ok(()) => String::from_utf8(out.out)
                .map_err(|_| TemplateFailure::Other("the result is not UTF-8".into())),
            Err(_) if out.overflowed => Err(TemplateFailure::Limit(format!(
                "it renders to more than {} MiB (the size limit)",
                MAX_RENDERED >> 20
            ))),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(TemplateFailure::Limit(
                format!("it takes more than {TEMPLATE_FUEL} steps (the step budget)"),
            )),
            Err(e) => Err(TemplateFailure::Other(describe(&e))),
        }
    }
}

thread_local! {
    /// One environment per thread (setting one up registers every builtin).
    static ENV: Environment<'static> = {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env
    };
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

    #[test]
    fn template_bombs_hit_a_limit() {
        let c = ctx();
        let limit = |r: Result<String, TemplateFailure>| match r {
            Err(TemplateFailure::Limit(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = limit(c.render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        ));
        assert!(m.contains("step budget"), "{m}");
        let m = limit(c.render("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"));
        assert!(m.contains("size limit"), "{m}");
        // Growth inside one value: only the memory budget stops it (the
        // lib's tests install the budgeting allocator, as the binary does).
        crate::budget::declare_installed();
        let m = limit(c.render(
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        ));
        assert!(m.contains("memory budget"), "{m}");
        let m = limit(c.render(
            "{{ ('ab' * 50)|replace('', 'ab' * 50)|replace('', 'ab' * 50)|replace('', 'ab' * 50)|length }}",
        ));
        assert!(m.contains("memory budget"), "{m}");
        assert_eq!(c.render("{{ vars.version }}").unwrap(), "1.4.2");
    }
}
