//! ROUGE parity with Python's `rouge-score` 0.1.2 (the pinned venv of tests/eval/venv.sh; the test
//! command exports its python as OXTUNE_TEST_PYTHON): over 200+ candidate/reference pairs —
//! punctuation, casing, numbers, empty strings, multi-sentence summaries, non-ASCII text — every
//! precision, recall and F of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum must be the same f64, bit
//! for bit, with and without the stemmer; and the stemmer itself gives NLTK's stem for thousands
//! of words built from English roots and suffixes plus random letter strings.

use std::process::Command;

use trainer::eval::porter;
use trainer::eval::rouge::{score, RougeOptions, Score};
use trainer::rng::Rng;

/// Hand-written cases for the corners, then seeded random summaries over a small vocabulary (so
/// n-grams repeat and overlap) with punctuation, case changes, numbers and sentence breaks.
fn pairs() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("", ""),
        ("", "something"),
        ("something", ""),
        ("The cat sat on the mat.", "the cat sat on the mat"),
        ("THE CAT", "the cat"),
        ("Hello, world!", "hello world"),
        ("It costs $3.50 (about 3 euros).", "It costs 3 50 euros"),
        ("2024-05-01: 17 people", "17 people on 2024 05 01"),
        ("Amanda baked cookies.\nJerry will bring Amanda some.", "Amanda baked cookies and will bring Jerry some."),
        ("a b c\nd e", "a b d e"),
        ("a b c\nd e", "d e\na b c"),
        ("a a a b", "a b b b"),
        ("one\n\ntwo\n", "one two"),
        ("  \n  ", "x"),
        ("café déjà vu", "cafe deja vu"),
        ("日本語のテキスト", "日本語のテキスト"),
        ("Привет мир", "привет мир"),
        ("naïve façade", "naive facade"),
        ("Straße", "strasse"),
        ("İstanbul", "istanbul"),
        ("K-pop (KELVIN sign) K", "k pop k"),
        ("don't won't can't", "do not will not cannot"),
        ("x1y2z3 a-b_c", "x1y2z3 a b c"),
        ("the the the the", "the"),
        ("the", "the the the the"),
        ("A.\nB.\nC.", "C. B. A."),
        ("first sentence here\nsecond sentence there\nthird one", "second sentence here\nfirst one there"),
        ("tab\tseparated\ttext", "tab separated text"),
        ("emoji 🙂 text", "emoji text"),
        ("42", "42.0"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let words = [
        "the",
        "a",
        "meeting",
        "is",
        "at",
        "5",
        "pm",
        "Tom",
        "will",
        "bring",
        "cake",
        "and",
        "Anna",
        "says",
        "no",
        "tomorrow",
        "2",
        "they",
        "agree",
        "to",
        "meet",
        "office",
        "late",
        "call",
        "Mum",
        "won't",
        "come",
        "meetings",
        "agreed",
        "calling",
        "relational",
        "happily",
        "brings",
        "offices",
        "coming",
        "arguably",
    ];
    let punct = ["", "", "", ",", ".", "!", "?", ":", "'s", " -"];
    let mut rng = Rng::new(20261206);
    let text = |rng: &mut Rng| {
        let sentences = 1 + (rng.next_u64() % 3) as usize;
        let mut out = Vec::new();
        for _ in 0..sentences {
            let n = 1 + (rng.next_u64() % 9) as usize;
            let mut s = String::new();
            for k in 0..n {
                let mut w = words[(rng.next_u64() % words.len() as u64) as usize].to_string();
                if rng.next_u64().is_multiple_of(7) {
                    w = w.to_uppercase();
                }
                if k > 0 {
                    s.push(' ');
                }
                s.push_str(&w);
                s.push_str(punct[(rng.next_u64() % punct.len() as u64) as usize]);
            }
            out.push(s);
        }
        out.join(if rng.next_u64().is_multiple_of(2) { "\n" } else { " " })
    };
    for _ in 0..200 {
        let reference = text(&mut rng);
        let candidate = text(&mut rng);
        v.push((reference, candidate));
    }
    v
}

/// The Python interpreter with rouge-score, or None (a loud skip outside CI; a failure in CI).
fn python() -> Option<String> {
    match std::env::var("OXTUNE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("CI").is_some() => panic!("OXTUNE_TEST_PYTHON is not set: run ./tests/run.sh"),
        _ => {
            eprintln!("\n*** SKIPPED ROUGE parity: OXTUNE_TEST_PYTHON is not set (PY=$(bash tests/eval/venv.sh); OXTUNE_TEST_PYTHON=$PY cargo test ...) ***\n");
            None
        }
    }
}

const SCORE_IN_PYTHON: &str = r#"
import json, struct, sys
from rouge_score import rouge_scorer
scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=sys.argv[2] == "1")
bits = lambda x: struct.unpack("<Q", struct.pack("<d", float(x)))[0]
out = []
for target, prediction in json.load(open(sys.argv[1], encoding="utf-8")):
    s = scorer.score(target, prediction)
    out.append([[bits(s[k].precision), bits(s[k].recall), bits(s[k].fmeasure)] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")])
json.dump(out, sys.stdout)
"#;

#[test]
fn rouge_matches_python_rouge_score_bit_for_bit() {
    rouge_parity(RougeOptions { use_stemmer: false });
}

#[test]
fn rouge_with_stemmer_matches_python_rouge_score_bit_for_bit() {
    rouge_parity(RougeOptions { use_stemmer: true });
}

fn rouge_parity(opts: RougeOptions) {
    let Some(python) = python() else { return };
    let pairs = pairs();
    assert!(pairs.len() >= 200);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.json");
    std::fs::write(&input, serde_json::to_string(&pairs).unwrap()).unwrap();
    let stem_flag = if opts.use_stemmer { "1" } else { "0" };
    let out = Command::new(&python).arg("-c").arg(SCORE_IN_PYTHON).arg(&input).arg(stem_flag).output().unwrap();
    assert!(out.status.success(), "python rouge-score failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<Vec<[u64; 3]>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), pairs.len());
    let bits = |s: &Score| [s.precision.to_bits(), s.recall.to_bits(), s.fmeasure.to_bits()];
    let mut nonzero = 0;
    for ((target, prediction), want) in pairs.iter().zip(&want) {
        let got = score(target, prediction, opts);
        let got = [bits(&got.rouge1), bits(&got.rouge2), bits(&got.rouge_l), bits(&got.rouge_lsum)];
        for (k, name) in ["rouge1", "rouge2", "rougeL", "rougeLsum"].iter().enumerate() {
            assert_eq!(
                got[k],
                want[k],
                "{name} ({opts:?}) of {prediction:?} against {target:?}: ours {:?}, rouge-score {:?}",
                got[k].map(f64::from_bits),
                want[k].map(f64::from_bits)
            );
        }
        nonzero += usize::from(got[0][2] != 0);
    }
    assert!(nonzero > 150, "the fixture must mostly overlap to test anything: {nonzero} non-zero ROUGE-1");
}

/// Words for the stemmer: English-like roots × suffixes (every rule of every step has a suffix
/// here), NLTK's irregular forms, and seeded random strings over a letter set rich in `y` and
/// vowels (the consonant rule's corner).
fn stemmer_words() -> Vec<String> {
    let roots = [
        "relat",
        "condition",
        "general",
        "happ",
        "run",
        "hop",
        "agre",
        "fe",
        "troubl",
        "sk",
        "probat",
        "rat",
        "electr",
        "hop",
        "formal",
        "sensitiv",
        "digit",
        "analog",
        "control",
        "car",
        "pon",
        "cat",
        "adjust",
        "depend",
        "irritat",
        "activ",
        "effect",
        "bowdler",
        "communic",
        "valen",
        "hesit",
        "decis",
        "play",
        "tr",
        "fl",
        "dy",
        "enjoy",
        "say",
        "boy",
        "cr",
        "argu",
        "hope",
        "fil",
        "fall",
        "sing",
        "mot",
        "plaster",
        "conflat",
        "succ",
        "exc",
        "proc",
        "inn",
        "out",
        "cann",
        "news",
        "bl",
        "iz",
        "at",
        "fizz",
        "buzz",
        "kiss",
        "toll",
        "radic",
        "crit",
        "geolog",
        "theolog",
        "oscill",
        "rational",
        "nation",
        "station",
        "emotion",
        "devot",
    ];
    let suffixes = [
        "", "s", "es", "ed", "ing", "ly", "ness", "ful", "fully", "fulness", "ation", "ational", "ization", "izer",
        "ement", "ment", "ity", "ities", "ive", "iveness", "ous", "ously", "ousness", "al", "ally", "alism", "ality",
        "ance", "ence", "ency", "ancy", "able", "ably", "ibility", "ible", "ant", "ent", "ently", "ism", "ate", "ated",
        "ator", "ion", "ions", "ic", "ical", "icate", "icity", "logy", "logies", "y", "ies", "ied", "ll", "er", "e",
        "eed", "sses", "bly", "li", "logi", "alli", "fulli", "entli", "eli", "ousli", "aliti", "iviti", "biliti",
        "ative", "alize", "iciti", "ou", "iti", "ize", "izing", "at", "bl", "ying", "yed",
    ];
    let mut words: Vec<String> = Vec::new();
    for r in roots {
        for s in suffixes {
            words.push(format!("{r}{s}"));
        }
    }
    for w in ["sky", "skies", "dying", "lying", "tying", "news", "innings", "inning", "outings", "outing", "cannings"] {
        words.push(w.to_string());
    }
    for w in ["canning", "howe", "proceed", "exceed", "succeed", "yyyy", "ayyy", "yay", "eye", "ies", "ied", "aied"] {
        words.push(w.to_string());
    }
    let letters = b"aeiouyybcdlmnrstz";
    let mut rng = Rng::new(5);
    for _ in 0..1500 {
        let n = 3 + (rng.next_u64() % 9) as usize;
        words.push((0..n).map(|_| letters[(rng.next_u64() % letters.len() as u64) as usize] as char).collect());
    }
    words
}

#[test]
fn porter_stemmer_matches_nltk() {
    let Some(python) = python() else { return };
    let words = stemmer_words();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("words.json");
    std::fs::write(&input, serde_json::to_string(&words).unwrap()).unwrap();
    let script = "import json, sys\nfrom nltk.stem import porter\ns = porter.PorterStemmer()\njson.dump([s.stem(w) for w in json.load(open(sys.argv[1]))], sys.stdout)";
    let out = Command::new(&python).arg("-c").arg(script).arg(&input).output().unwrap();
    assert!(out.status.success(), "python nltk failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let wrong: Vec<String> = words
        .iter()
        .zip(&want)
        .filter(|(w, s)| porter::stem(w) != **s)
        .map(|(w, s)| format!("{w}: ours {}, nltk {s}", porter::stem(w)))
        .collect();
    assert!(wrong.is_empty(), "{} of {} stems differ from NLTK's:\n{}", wrong.len(), words.len(), wrong.join("\n"));
    let changed = words.iter().zip(&want).filter(|(w, s)| w != s).count();
    assert!(changed > words.len() / 2, "the word list must exercise the rules: only {changed} words change");
}
