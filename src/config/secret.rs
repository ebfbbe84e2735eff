//! A secret from the configuration (the admin token, the etcd password). It prints as
//! `****` in `Debug` and `Display`, so no config struct needs a hand-written redacting
//! `Debug` and no log line can show one by accident; [`Secret::expose`] is the one way to
//! read it, and easy to find.

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: for the one place that needs it (an auth check, a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_only_stars_and_exposes_on_request() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "**** **** Some(****)");
        assert_eq!(s.expose(), "hunter2");
        let from_toml: std::collections::HashMap<String, Secret> =
            toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(from_toml["password"], s);
    }
}
