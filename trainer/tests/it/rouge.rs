//! ROUGE parity with Python's `rouge-score` 0.1.2 (the pinned venv of tests/eval/venv.sh; the test
//! command exports its python as OXTUNE_TEST_PYTHON): over 200+ candidate/reference pairs —
//! punctuation, casing, numbers, empty strings, multi-sentence summaries, non-ASCII text — every
//! precision, recall and F of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum must be the same f64, bit
//! for bit.

use std::process::Command;

use trainer::eval::rouge::{score, Score};
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
        "the", "a", "meeting", "is", "at", "5", "pm", "Tom", "will", "bring", "cake", "and", "Anna", "says", "no",
        "tomorrow", "2", "they", "agree", "to", "meet", "office", "late", "call", "Mum", "won't", "come",
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
                if rng.next_u64() % 7 == 0 {
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
        out.join(if rng.next_u64() % 2 == 0 { "\n" } else { " " })
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
scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
bits = lambda x: struct.unpack("<Q", struct.pack("<d", float(x)))[0]
out = []
for target, prediction in json.load(open(sys.argv[1], encoding="utf-8")):
    s = scorer.score(target, prediction)
    out.append([[bits(s[k].precision), bits(s[k].recall), bits(s[k].fmeasure)] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")])
json.dump(out, sys.stdout)
"#;

#[test]
fn rouge_matches_python_rouge_score_bit_for_bit() {
    let Some(python) = python() else { return };
    let pairs = pairs();
    assert!(pairs.len() >= 200);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.json");
    std::fs::write(&input, serde_json::to_string(&pairs).unwrap()).unwrap();
    let out = Command::new(&python).arg("-c").arg(SCORE_IN_PYTHON).arg(&input).output().unwrap();
    assert!(out.status.success(), "python rouge-score failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<Vec<[u64; 3]>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), pairs.len());
    let bits = |s: &Score| [s.precision.to_bits(), s.recall.to_bits(), s.fmeasure.to_bits()];
    let mut nonzero = 0;
    for ((target, prediction), want) in pairs.iter().zip(&want) {
        let got = score(target, prediction);
        let got = [bits(&got.rouge1), bits(&got.rouge2), bits(&got.rouge_l), bits(&got.rouge_lsum)];
        for (k, name) in ["rouge1", "rouge2", "rougeL", "rougeLsum"].iter().enumerate() {
            assert_eq!(
                got[k],
                want[k],
                "{name} of {prediction:?} against {target:?}: ours {:?}, rouge-score {:?}",
                got[k].map(f64::from_bits),
                want[k].map(f64::from_bits)
            );
        }
        nonzero += usize::from(got[0][2] != 0);
    }
    assert!(nonzero > 150, "the fixture must mostly overlap to test anything: {nonzero} non-zero ROUGE-1");
}
