//! `imgc plan --matrix SPEC…`: one CI job per spec × platform, as a JSON
//! matrix a CI engine expands (GitHub Actions' `strategy.matrix`, GitLab's
//! `parallel:matrix`). imgc schedules nothing itself.

use super::{registry, spec_dir, CommonArgs, Failure};
use imgc::spec::SpecFile;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The form of the matrix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixFormat {
    /// `{"include": [{"spec", "platform", "name", "shard"}, …]}`, for
    /// `strategy.matrix: ${{ fromJSON(…) }}`.
    Github,
    /// `{"parallel": {"matrix": [{"SPEC": …, "PLATFORM": […]}, …]}}`, a
    /// job fragment (JSON is YAML) for a generated GitLab child pipeline.
    Gitlab,
}

/// One job: a spec and one of its platforms.
pub struct Job {
    spec: String,
    platform: String,
    name: Option<String>,
}

/// The jobs of every spec, in the order given, each spec's platforms in
/// index order.
pub fn jobs(
    specs: &[PathBuf],
    common: &CommonArgs,
    registry_args: &registry::RegistryArgs,
    mode: imgc::registry::pull::ResolveMode,
) -> Result<Vec<Job>, Failure> {
    let client = registry::client(registry_args, None, true)?;
    let opts = super::plan_options(common, &[])?;
    let mut out = Vec::new();
    for path in specs {
        let file = SpecFile::load(path)?;
        let (resolver, _) = registry::bases(path, client.clone(), mode)?;
        let bases = imgc::base::LayoutBases {
            spec_dir: spec_dir(&file),
            remote: Some(resolver),
        };
        let name = file.spec.image.name.as_ref().map(|n| n.value.clone());
        for p in imgc::plan::platforms(&file, &opts, &bases)? {
            out.push(Job {
                spec: path.display().to_string(),
                platform: p.to_string(),
                name: name.clone(),
            });
        }
    }
    Ok(out)
}

/// A name for a job's files and artifacts: the spec path and the platform,
/// with anything but letters and digits as `-`.
fn shard_id(job: &Job) -> String {
    let raw = format!(
        "{}-{}",
        job.spec.trim_end_matches("image.toml"),
        job.platform
    );
    let mut id = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (id.is_empty() || id.ends_with('-'))) {
            id.push(c);
        }
    }
    id.trim_end_matches('-').to_string()
}

/// The matrix document.
pub fn render(jobs: &[Job], format: MatrixFormat) -> Value {
    match format {
        MatrixFormat::Github => {
            let include: Vec<Value> = jobs
                .iter()
                .map(|j| {
                    json!({
                        "spec": j.spec,
                        "platform": j.platform,
                        "name": j.name.clone().unwrap_or_default(),
                        "shard": shard_id(j),
                    })
                })
                .collect();
            json!({ "include": include })
        }
        MatrixFormat::Gitlab => {
            let mut by_spec: Vec<(String, Vec<String>)> = Vec::new();
            for j in jobs {
                match by_spec.iter_mut().find(|(s, _)| *s == j.spec) {
                    Some((_, ps)) => ps.push(j.platform.clone()),
                    None => by_spec.push((j.spec.clone(), vec![j.platform.clone()])),
                }
            }
            let matrix: Vec<Value> = by_spec
                .into_iter()
                .map(|(spec, platforms)| json!({ "SPEC": spec, "PLATFORM": platforms }))
                .collect();
            json!({ "parallel": { "matrix": matrix } })
        }
    }
}
