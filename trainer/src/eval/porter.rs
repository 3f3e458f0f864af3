//! The Porter stemmer as NLTK's `PorterStemmer()` runs it by default (mode `NLTK_EXTENSIONS`,
//! nltk 3.10), which is what Python's `rouge-score` applies with `use_stemmer=True`. Written from
//! the algorithm (Porter 1980) and the rule list of NLTK's extensions: irregular forms, `ies`/`ied`
//! on four-letter words, `y → i` only after a consonant that is not the first letter, `alli`,
//! `fulli` and `logi` in step 2, and the two-letter cvc case. Words arrive as rouge-score's tokens
//! (lower-case `[a-z0-9]` only), so the stemmer works on ASCII bytes.

/// NLTK's irregular forms: word → stem, checked before any rule.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// The stem of one lower-case word.
pub fn stem(word: &str) -> String {
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == word) {
        return s.to_string();
    }
    if word.len() <= 2 {
        return word.to_string();
    }
    let mut w = word.as_bytes().to_vec();
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5a(&mut w);
    step5b(&mut w);
    String::from_utf8(w).unwrap_or_else(|_| word.to_string())
}

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Whether each letter is a consonant: `y` is one at the start and after a vowel.
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// m in [C](VC)^m[V]: the number of vowel→consonant transitions.
fn measure(w: &[u8]) -> usize {
    consonants(w).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[u8]) -> bool {
    consonants(w).iter().any(|c| !c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// *o: ends consonant–vowel–consonant, the last not w, x or y (NLTK also: a two-letter vowel–consonant word).
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    let c = consonants(w);
    (n >= 3 && c[n - 3] && !c[n - 2] && c[n - 1] && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !c[0] && c[1])
}

fn ends(w: &[u8], suffix: &str) -> bool {
    w.ends_with(suffix.as_bytes())
}

fn replace_end(w: &mut Vec<u8>, suffix: &str, with: &str) {
    w.truncate(w.len() - suffix.len());
    w.extend_from_slice(with.as_bytes());
}

/// A rule's condition on the stem left after removing its suffix (`word` is the whole word).
type Condition = fn(stem: &[u8], word: &[u8]) -> bool;

fn always(_: &[u8], _: &[u8]) -> bool {
    true
}
fn m_positive(stem: &[u8], _: &[u8]) -> bool {
    measure(stem) > 0
}
fn m_above_1(stem: &[u8], _: &[u8]) -> bool {
    measure(stem) > 1
}

/// The first rule whose suffix the word ends with decides: replaced when its condition holds,
/// unchanged otherwise (later rules are not tried).
fn apply_rules(w: &mut Vec<u8>, rules: &[(&str, &str, Condition)]) {
    for (suffix, with, cond) in rules {
        if ends(w, suffix) {
            let stem = &w[..w.len() - suffix.len()];
            if cond(stem, w) {
                replace_end(w, suffix, with);
            }
            return;
        }
    }
}

fn step1a(w: &mut Vec<u8>) {
    if ends(w, "ies") && w.len() == 4 {
        return replace_end(w, "ies", "ie");
    }
    apply_rules(w, &[("sses", "ss", always), ("ies", "i", always), ("ss", "ss", always), ("s", "", always)]);
}

fn step1b(w: &mut Vec<u8>) {
    if ends(w, "ied") {
        let with = if w.len() == 4 { "ie" } else { "i" };
        return replace_end(w, "ied", with);
    }
    if ends(w, "eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            replace_end(w, "eed", "ee");
        }
        return;
    }
    let Some(suffix) = ["ed", "ing"].into_iter().find(|s| ends(w, s) && contains_vowel(&w[..w.len() - s.len()])) else {
        return;
    };
    replace_end(w, suffix, "");
    // The stem left is tidied: at/bl/iz gain an e, a double consonant loses one letter (not l, s, z),
    // a short cvc stem gains an e.
    if ends(w, "at") || ends(w, "bl") || ends(w, "iz") {
        w.push(b'e');
    } else if ends_double_consonant(w) {
        if !matches!(w[w.len() - 1], b'l' | b's' | b'z') {
            w.pop();
        }
    } else if measure(w) == 1 && ends_cvc(w) {
        w.push(b'e');
    }
}

fn step1c(w: &mut [u8]) {
    let n = w.len();
    if n >= 3 && w[n - 1] == b'y' && is_consonant(w, n - 2) {
        w[n - 1] = b'i';
    }
}

fn step2(w: &mut Vec<u8>) {
    if ends(w, "alli") && measure(&w[..w.len() - 4]) > 0 {
        replace_end(w, "alli", "al");
        return step2(w);
    }
    fn logi(_: &[u8], word: &[u8]) -> bool {
        measure(&word[..word.len() - 3]) > 0
    }
    apply_rules(
        w,
        &[
            ("ational", "ate", m_positive),
            ("tional", "tion", m_positive),
            ("enci", "ence", m_positive),
            ("anci", "ance", m_positive),
            ("izer", "ize", m_positive),
            ("bli", "ble", m_positive),
            ("alli", "al", m_positive),
            ("entli", "ent", m_positive),
            ("eli", "e", m_positive),
            ("ousli", "ous", m_positive),
            ("ization", "ize", m_positive),
            ("ation", "ate", m_positive),
            ("ator", "ate", m_positive),
            ("alism", "al", m_positive),
            ("iveness", "ive", m_positive),
            ("fulness", "ful", m_positive),
            ("ousness", "ous", m_positive),
            ("aliti", "al", m_positive),
            ("iviti", "ive", m_positive),
            ("biliti", "ble", m_positive),
            ("fulli", "ful", m_positive),
            ("logi", "log", logi),
        ],
    );
}

fn step3(w: &mut Vec<u8>) {
    apply_rules(
        w,
        &[
            ("icate", "ic", m_positive),
            ("ative", "", m_positive),
            ("alize", "al", m_positive),
            ("iciti", "ic", m_positive),
            ("ical", "ic", m_positive),
            ("ful", "", m_positive),
            ("ness", "", m_positive),
        ],
    );
}

fn step4(w: &mut Vec<u8>) {
    fn ion(stem: &[u8], _: &[u8]) -> bool {
        measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't'))
    }
    apply_rules(
        w,
        &[
            ("al", "", m_above_1),
            ("ance", "", m_above_1),
            ("ence", "", m_above_1),
            ("er", "", m_above_1),
            ("ic", "", m_above_1),
            ("able", "", m_above_1),
            ("ible", "", m_above_1),
            ("ant", "", m_above_1),
            ("ement", "", m_above_1),
            ("ment", "", m_above_1),
            ("ent", "", m_above_1),
            ("ion", "", ion),
            ("ou", "", m_above_1),
            ("ism", "", m_above_1),
            ("ate", "", m_above_1),
            ("iti", "", m_above_1),
            ("ous", "", m_above_1),
            ("ive", "", m_above_1),
            ("ize", "", m_above_1),
        ],
    );
}

fn step5a(w: &mut Vec<u8>) {
    if ends(w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

fn step5b(w: &mut Vec<u8>) {
    if ends(w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        w.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    /// Porter's own examples (1980 paper) where NLTK's extensions agree, and NLTK's irregular forms.
    #[test]
    fn textbook_stems() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("electrical", "electr"),
            ("adjustment", "adjust"),
            ("controlling", "control"),
            ("dying", "die"),
            ("skies", "sky"),
            ("running", "run"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
