//! Shell patterns for `resagent_plugin_claims` (`fw-*.bin *.swu`): `*` any run of
//! characters, `?` one character, `[abc]` / `[a-z]` / `[!x]` one of a set, `\x` the
//! character itself — `fnmatch(3)` without flags, on whole names, in safe Rust.

/// Whether `name` matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some(&c) => {
                if let Some((ok, len)) = single(&p[pi..], c, n[ni]) {
                    if ok {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                }
            }
            None => {}
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether the pattern element at the start of `p` (its first char `c`) matches `ch`,
/// and how many pattern chars it spans; None for a malformed element.
fn single(p: &[char], c: char, ch: char) -> Option<(bool, usize)> {
    match c {
        '?' => Some((true, 1)),
        '\\' => p.get(1).map(|&e| (e == ch, 2)),
        '[' => {
            let mut i = 1;
            let negate = matches!(p.get(1), Some('!') | Some('^'));
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            loop {
                let &x = p.get(i)?;
                if x == ']' && !first {
                    break;
                }
                first = false;
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
                    let hi = p[i + 2];
                    hit |= x <= ch && ch <= hi;
                    i += 3;
                } else {
                    hit |= x == ch;
                    i += 1;
                }
            }
            Some((hit != negate, i + 1))
        }
        _ => Some((c == ch, 1)),
    }
}

/// Whether any of the space-separated `patterns` matches `name`.
pub(crate) fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

/// The first of `patterns` that matches `name` when ASCII case is ignored (`plugin_only`:
/// `rootfs.SWU` is a `*.swu` too, whatever the plugin that claims `*.swu` says).
pub(crate) fn first_match_ignoring_case<'a>(patterns: &'a [String], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    patterns
        .iter()
        .find(|p| matches(&p.to_ascii_lowercase(), &name))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::{first_match_ignoring_case, matches};

    #[test]
    fn plugin_only_patterns_ignore_case() {
        let p = vec!["*.swu".to_string(), "*.RAUCB".to_string()];
        assert_eq!(first_match_ignoring_case(&p, "rootfs-5.SWU"), Some("*.swu"));
        assert_eq!(first_match_ignoring_case(&p, "os.raucb"), Some("*.RAUCB"));
        assert_eq!(first_match_ignoring_case(&p, "notes.txt"), None);
        assert!(
            !matches("*.swu", "rootfs-5.SWU"),
            "claims stay as fnmatch(3)"
        );
    }

    #[test]
    fn patterns_as_fnmatch() {
        for (p, n) in [
            ("fw-*.bin", "fw-1.2.bin"),
            ("fw-*.bin", "fw-.bin"),
            ("*.swu", "rootfs.swu"),
            ("*", ""),
            ("a?c", "abc"),
            ("[ab]x", "bx"),
            ("[a-c]*", "cat"),
            ("[!x]y", "zy"),
            ("\\*", "*"),
            ("*a*b", "xaxxb"),
        ] {
            assert!(matches(p, n), "{p} ~ {n}");
        }
        for (p, n) in [
            ("fw-*.bin", "fw-1.2.bin.sig"),
            ("fw-*.bin", "xfw-1.bin"),
            ("a?c", "ac"),
            ("[ab]x", "cx"),
            ("[!x]y", "xy"),
            ("[abc", "a"),
            ("*.swu", "rootfs.swux"),
        ] {
            assert!(!matches(p, n), "{p} !~ {n}");
        }
    }
}
