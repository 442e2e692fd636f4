//! Query-string parsing with errors that name the parameter (Durable Functions routes take
//! repeated and comma-separated values, which a plain struct extractor does not).

use crate::ApiError;
use cairn_core::{Millis, RuntimeStatus};
use std::time::UNIX_EPOCH;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let mut out = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .map_err(|_| {
                        ApiError::BadRequest(format!("query parameter '{k}' is not valid UTF-8"))
                    })
            };
            out.push((decode(k)?, decode(v)?));
        }
        Ok(Params(out))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(v) => Err(ApiError::BadRequest(format!(
                "query parameter '{name}' must be true or false, not '{v}'"
            ))),
        }
    }

    pub fn usize(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 && n <= max => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "query parameter '{name}' must be a number from 1 to {max}, not '{v}'"
                ))),
            },
        }
    }

    /// An RFC 3339 time (`2026-11-23T10:00:00Z`) as milliseconds since the epoch.
    pub fn time(&self, name: &str) -> Result<Option<Millis>, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => humantime::parse_rfc3339_weak(v)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| Some(d.as_millis() as Millis))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "query parameter '{name}' must be an RFC 3339 time such as 2026-01-31T12:00:00Z, not '{v}'"
                    ))
                }),
        }
    }

    /// `runtimeStatus=Running,Failed` and/or repeated `runtimeStatus=` parameters.
    pub fn statuses(&self, name: &str) -> Result<Vec<RuntimeStatus>, ApiError> {
        let mut out = Vec::new();
        for (_, v) in self.0.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let status = RuntimeStatus::parse(part).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown runtime status '{part}' in '{name}'; use one of {}",
                        RuntimeStatus::ALL.map(|s| s.as_str()).join(", ")
                    ))
                })?;
                if !out.contains(&status) {
                    out.push(status);
                }
            }
        }
        Ok(out)
    }
}
