//! Update rules: how a commit changes the centre variable. Chosen by data (a name and numeric
//! parameters), applied here in Rust; the formulas are in `docs/rules.md`.

use multiversion::multiversion;

use crate::error::{Error, Result};
use crate::protocol::rule_code;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `C += scale * D` (DOWNPOUR, ADAG, and the elastic commits of AEASGD/EAMSGD computed by the worker).
    Add { scale: f32 },
    /// `C += D / (tau + 1)` with `tau` the commit's staleness (DynSGD).
    DynSgd,
    /// `C += D / ((C - Cs)^2 / gamma + 1)` elementwise, `Cs` the centre last sent to the worker.
    Adaptive { gamma: f32 },
    /// The worker sends its weights `W`; the server computes `E = alpha * (W - C)` against the
    /// current centre, applies `C += E` and replies with `E` so the worker can do `W -= E`.
    Elastic { alpha: f32 },
    /// Synchronous rounds: wait for `workers` commits, then `C += scale * sum(D_i)`; every worker
    /// gets the new centre back. EASGD: `D_i = E_i`, scale 1; model averaging: `D_i = W_i - C`, scale 1/n.
    Sync { workers: u32, scale: f32 },
}

/// One update rule: its name, its parameters with their defaults (`None`: the caller must give
/// it), its wire code and how it is built from checked parameter values.
pub struct RuleSpec {
    pub name: &'static str,
    pub params: &'static [(&'static str, Option<f64>)],
    pub code: u8,
    build: fn(&Params<'_>) -> Result<Rule>,
}

/// Every update rule, in the order they are listed. `Rule::parse`, `Rule::name`, `Rule::params`,
/// `Rule::code`, the rule syntax in error messages and Python's `RULES` and `RULE_PARAMS` all
/// read this table.
pub const RULES: [RuleSpec; 5] = [
    RuleSpec {
        name: "add",
        params: &[("scale", Some(1.0))],
        code: rule_code::ADD,
        build: |p| {
            Ok(Rule::Add {
                scale: p.positive("scale")?,
            })
        },
    },
    RuleSpec {
        name: "dynsgd",
        params: &[],
        code: rule_code::DYNSGD,
        build: |_| Ok(Rule::DynSgd),
    },
    RuleSpec {
        name: "adaptive",
        params: &[("gamma", Some(1e-4))],
        code: rule_code::ADAPTIVE,
        build: |p| {
            Ok(Rule::Adaptive {
                gamma: p.positive("gamma")?,
            })
        },
    },
    RuleSpec {
        name: "elastic",
        params: &[("alpha", None)],
        code: rule_code::ELASTIC,
        build: |p| {
            Ok(Rule::Elastic {
                alpha: p.positive("alpha")?,
            })
        },
    },
    RuleSpec {
        name: "sync",
        params: &[("workers", None), ("scale", Some(1.0))],
        code: rule_code::SYNC,
        build: |p| {
            let workers = f64::from(p.positive("workers")?);
            if workers.fract() != 0.0 || workers > 65_536.0 {
                return Err(Error::invalid(format!(
                    "rule parameter workers must be a whole number of workers, got {workers}"
                )));
            }
            Ok(Rule::Sync {
                workers: workers as u32,
                scale: p.positive("scale")?,
            })
        },
    },
];

impl RuleSpec {
    pub fn param_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|(name, _)| *name).collect()
    }

    /// `name(param=default, ...)`, as error messages and `dk` help show it.
    pub fn syntax(&self) -> String {
        if self.params.is_empty() {
            return self.name.to_string();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(key, default)| match default {
                None => key.to_string(),
                Some(v) if v.fract() == 0.0 => format!("{key}={v}"),
                Some(v) => format!("{key}={v:e}"),
            })
            .collect();
        format!("{}({})", self.name, params.join(", "))
    }
}

/// Every rule's syntax: "add(scale=1), dynsgd, adaptive(gamma=1e-4), ...".
pub fn rule_syntax() -> String {
    let all: Vec<String> = RULES.iter().map(RuleSpec::syntax).collect();
    all.join(", ")
}

/// The parameters a caller gave, checked against its rule's table entry.
struct Params<'a> {
    rule: &'a RuleSpec,
    given: &'a [(&'a str, f64)],
}

impl Params<'_> {
    /// The value given for `key`, or its default; it must be positive.
    fn positive(&self, key: &str) -> Result<f32> {
        let default = self
            .rule
            .params
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, d)| *d);
        let v = self
            .given
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .or(default)
            .ok_or_else(|| {
                Error::invalid(format!("rule {:?} needs parameter {key:?}", self.rule.name))
            })?;
        if v <= 0.0 {
            return Err(Error::invalid(format!(
                "rule parameter {key} must be > 0, got {v}"
            )));
        }
        // Rules compute in float32: a value that would become infinite or zero there is refused.
        let single = v as f32;
        if !single.is_finite() || single < f32::MIN_POSITIVE {
            return Err(Error::invalid(format!(
                "rule parameter {key} must be between {:e} and {:e} (rules compute in float32), got {v:e}",
                f32::MIN_POSITIVE,
                f32::MAX
            )));
        }
        Ok(single)
    }
}

impl Rule {
    /// Builds a rule from its name and parameters; an unknown name, an unknown or missing parameter,
    /// or a value out of range is an error naming what is valid.
    pub fn parse(name: &str, params: &[(&str, f64)]) -> Result<Rule> {
        let rule = RULES.iter().find(|r| r.name == name).ok_or_else(|| {
            Error::invalid(format!(
                "unknown update rule {name:?}; valid rules: {}",
                rule_syntax()
            ))
        })?;
        let allowed = rule.param_names();
        for (key, value) in params {
            if !allowed.contains(key) {
                return Err(Error::invalid(format!(
                    "rule {name:?} has no parameter {key:?}; its parameters: {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            if !value.is_finite() {
                return Err(Error::invalid(format!(
                    "rule parameter {key} must be finite, got {value}"
                )));
            }
        }
        (rule.build)(&Params {
            rule,
            given: params,
        })
    }

    /// This rule's entry in `RULES`.
    pub fn spec(&self) -> &'static RuleSpec {
        let index = match self {
            Rule::Add { .. } => 0,
            Rule::DynSgd => 1,
            Rule::Adaptive { .. } => 2,
            Rule::Elastic { .. } => 3,
            Rule::Sync { .. } => 4,
        };
        &RULES[index]
    }

    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    /// The rule's parameters and their values, in the table's order.
    pub fn params(&self) -> Vec<(&'static str, f64)> {
        let values = match *self {
            Rule::Add { scale } => vec![f64::from(scale)],
            Rule::DynSgd => vec![],
            Rule::Adaptive { gamma } => vec![f64::from(gamma)],
            Rule::Elastic { alpha } => vec![f64::from(alpha)],
            Rule::Sync { workers, scale } => vec![f64::from(workers), f64::from(scale)],
        };
        self.spec().param_names().into_iter().zip(values).collect()
    }

    /// Whether the server answers a commit with a vector (elastic: `E`; sync: the new centre).
    pub fn replies_with_vector(&self) -> bool {
        matches!(self, Rule::Elastic { .. } | Rule::Sync { .. })
    }

    /// Wire code sent in the handshake, so a client knows what a commit reply carries.
    pub fn code(&self) -> u8 {
        self.spec().code
    }
}

// Kernels over one shard. Plain loops over zipped slices that the compiler vectorises; each is
// also compiled for AVX2 and picked at run time, since the portable x86-64 baseline is SSE2 only.

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn add_scaled(centre: &mut [f32], delta: &[f32], scale: f32) {
    if scale == 1.0 {
        for (c, d) in centre.iter_mut().zip(delta) {
            *c += *d;
        }
    } else {
        for (c, d) in centre.iter_mut().zip(delta) {
            *c += scale * *d;
        }
    }
}

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn adaptive(centre: &mut [f32], delta: &[f32], sent: &[f32], gamma: f32) {
    let inv_gamma = 1.0 / gamma;
    for ((c, d), s) in centre.iter_mut().zip(delta).zip(sent) {
        let drift = *c - *s;
        *c += *d / (drift * drift * inv_gamma + 1.0);
    }
}

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn elastic(centre: &mut [f32], weights: &[f32], out: &mut [f32], alpha: f32) {
    for ((c, w), e) in centre.iter_mut().zip(weights).zip(out.iter_mut()) {
        let step = alpha * (*w - *c);
        *c += step;
        *e = step;
    }
}

/// The bits of the largest `|x|`: for non-negative floats the bit order is the numeric order, and
/// NaN and infinity have an all-ones exponent, so one integer max says both how large and whether
/// every value is finite. Branch-free so it vectorises.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn max_abs_bits(values: &[f32]) -> u32 {
    values
        .iter()
        .fold(0u32, |acc, x| acc.max(x.to_bits() & 0x7fff_ffff))
}

/// The largest `|x|`, or `None` if any value is NaN or infinite (which in a commit would poison
/// the centre for all).
pub fn finite_max_abs(values: &[f32]) -> Option<f32> {
    let bits = max_abs_bits(values);
    (bits < 0x7f80_0000).then(|| f32::from_bits(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_defaults_and_errors() {
        assert_eq!(Rule::parse("add", &[]).unwrap(), Rule::Add { scale: 1.0 });
        assert_eq!(
            Rule::parse("adaptive", &[]).unwrap(),
            Rule::Adaptive { gamma: 1e-4 }
        );
        assert_eq!(
            Rule::parse("sync", &[("workers", 3.0), ("scale", 0.5)]).unwrap(),
            Rule::Sync {
                workers: 3,
                scale: 0.5
            }
        );
        let unknown = Rule::parse("nesterov", &[]).unwrap_err().to_string();
        assert!(unknown.contains("valid rules"), "{unknown}");
        let bad_key = Rule::parse("add", &[("alpha", 1.0)])
            .unwrap_err()
            .to_string();
        assert!(bad_key.contains("scale"), "{bad_key}");
        assert!(Rule::parse("elastic", &[]).is_err());
        assert!(Rule::parse("sync", &[("workers", 2.5)]).is_err());
        assert!(Rule::parse("add", &[("scale", f64::NAN)]).is_err());
        assert!(Rule::parse("adaptive", &[("gamma", 0.0)]).is_err());
        // Checked in the type the rule computes in: float32.
        for too_far in [1e300, 1e39, 1e-300] {
            let err = Rule::parse("elastic", &[("alpha", too_far)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("float32") && err.contains("3.4028235e38"),
                "{err}"
            );
        }
        assert!(Rule::parse("elastic", &[("alpha", 3e38)]).is_ok());
    }

    #[test]
    fn the_table_describes_every_rule() {
        assert_eq!(
            rule_syntax(),
            "add(scale=1), dynsgd, adaptive(gamma=1e-4), elastic(alpha), sync(workers, scale=1)"
        );
        for spec in &RULES {
            // Required parameters given, defaults taken: the rule built is the one named.
            let required: Vec<(&str, f64)> = spec
                .params
                .iter()
                .filter(|(_, d)| d.is_none())
                .map(|(k, _)| (*k, 2.0))
                .collect();
            let rule = Rule::parse(spec.name, &required).unwrap();
            assert_eq!(rule.name(), spec.name);
            assert_eq!(rule.code(), spec.code);
            assert_eq!(
                rule.params().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                spec.param_names()
            );
            assert_eq!(
                rule.replies_with_vector(),
                [rule_code::ELASTIC, rule_code::SYNC].contains(&rule.code())
            );
        }
        let codes: std::collections::BTreeSet<u8> = RULES.iter().map(|r| r.code).collect();
        assert_eq!(codes.len(), RULES.len());
    }

    #[test]
    fn finite_check() {
        let mut v = vec![1.0f32; 5000];
        assert!(finite_max_abs(&v).is_some());
        v[4321] = f32::NAN;
        assert!(finite_max_abs(&v).is_none());
        v[4321] = f32::NEG_INFINITY;
        assert!(finite_max_abs(&v).is_none());
        v[4321] = f32::MAX;
        assert!(finite_max_abs(&v).is_some());
        v[17] = -f32::MAX;
        assert_eq!(finite_max_abs(&v), Some(f32::MAX));
        assert_eq!(finite_max_abs(&[-3.0, 2.0, 0.5]), Some(3.0));
        assert_eq!(finite_max_abs(&[]), Some(0.0));
    }

    #[test]
    fn kernels_follow_their_formulas() {
        let mut c = vec![1.0f32, 2.0, 3.0];
        add_scaled(&mut c, &[1.0, 1.0, 1.0], 0.5);
        assert_eq!(c, vec![1.5, 2.5, 3.5]);

        let mut c = vec![1.0f32, 1.0];
        adaptive(&mut c, &[1.0, 1.0], &[1.0, 0.0], 1.0);
        assert_eq!(c, vec![2.0, 1.5]); // drift 0 -> full step; drift 1 -> half step

        let mut c = vec![0.0f32, 4.0];
        let mut e = vec![0.0f32; 2];
        elastic(&mut c, &[2.0, 0.0], &mut e, 0.25);
        assert_eq!(e, vec![0.5, -1.0]);
        assert_eq!(c, vec![0.5, 3.0]);
    }
}
