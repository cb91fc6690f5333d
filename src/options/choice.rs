//! Options whose value is one of a few names (`edge = "pad"`, `--merge wbf`).

/// An enum of named choices. Implemented beside each enum; parsing, suggestions and the
/// list of names in messages come from [`Choice::NAMES`].
pub trait Choice: Copy + Sized + 'static {
    /// Every choice with its name, in the order messages list them.
    const NAMES: &'static [(&'static str, Self)];

    /// The choice's name.
    fn name(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("", |(n, _)| n)
    }
}

/// The choice named `value` (ASCII case ignored).
///
/// # Errors
/// `"VALUE" is not one of a, b, c` with a suggestion when a name is close.
pub fn parse_choice<T: Choice>(value: &str) -> Result<T, String> {
    let lower = value.to_ascii_lowercase();
    if let Some((_, v)) = T::NAMES.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    let names: Vec<&str> = T::NAMES.iter().map(|(n, _)| *n).collect();
    let hint = closest(value, &names)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default();
    Err(format!(
        "\"{value}\" is not one of {}{hint}",
        names.join(", ")
    ))
}

/// Edit distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word`, when close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// `FromStr` for a [`Choice`] enum, so clap and serde parse it the same way.
#[macro_export]
macro_rules! choice_from_str {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $crate::options::parse_choice(s)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Colour {
        Red,
        Green,
    }
    impl Choice for Colour {
        const NAMES: &'static [(&'static str, Self)] =
            &[("red", Colour::Red), ("green", Colour::Green)];
    }

    #[test]
    fn names_parse_and_typos_get_a_suggestion() {
        assert_eq!(parse_choice::<Colour>("GREEN"), Ok(Colour::Green));
        assert_eq!(Colour::Red.name(), "red");
        let e = parse_choice::<Colour>("gren").expect_err("typo");
        assert_eq!(
            e,
            "\"gren\" is not one of red, green; did you mean `green`?"
        );
        assert!(!parse_choice::<Colour>("blue")
            .expect_err("none")
            .contains("did you mean"));
    }

    #[test]
    fn suggestions_only_for_close_words() {
        assert_eq!(closest("ovrlap", &["overlap", "edge"]), Some("overlap"));
        assert_eq!(closest("colour", &["overlap", "edge"]), None);
    }
}
