//! Batching (causal shift, packing, length-grouped padding) and the validation split.

use std::path::PathBuf;

use trainer::data::{make_batches, split_validation, Batch, BatchSpec, Example, RowRef};

/// An example with ids `base, base+1, …` of length `n`; the first `prompt` tokens are not targets.
fn ex(base: u32, n: usize, prompt: usize) -> Example {
    Example {
        input_ids: (0..n as u32).map(|i| base + i).collect(),
        loss_mask: (0..n).map(|i| u8::from(i >= prompt)).collect(),
        source: RowRef { file: PathBuf::from("t.jsonl"), line: base as usize },
    }
}

fn row<T: Copy>(v: &[T], b: &Batch, r: usize) -> Vec<T> {
    v[r * b.seq..(r + 1) * b.seq].to_vec()
}

#[test]
fn packing_fills_rows_without_splitting_samples() {
    // Positions after the shift: 4, 3, 5, 2, 6 → next-fit into rows of 8: [4,3] [5,2] [6].
    let examples = vec![ex(100, 5, 1), ex(200, 4, 2), ex(300, 6, 0), ex(400, 3, 1), ex(500, 7, 3)];
    let order: Vec<usize> = (0..examples.len()).collect();
    let spec = BatchSpec { batch_size: 2, max_seq_length: 8, packing: true, pad_id: 9 };
    let batches = make_batches(&examples, &order, &spec);
    assert_eq!(batches.len(), 2);
    assert_eq!((batches[0].batch, batches[0].seq), (2, 8));
    assert_eq!((batches[1].batch, batches[1].seq), (1, 8), "the last batch may be smaller");

    let b = &batches[0];
    assert_eq!(row(&b.input_ids, b, 0), vec![100, 101, 102, 103, 200, 201, 202, 9]);
    assert_eq!(row(&b.targets, b, 0), vec![101, 102, 103, 104, 201, 202, 203, 0]);
    assert_eq!(row(&b.positions, b, 0), vec![0, 1, 2, 3, 0, 1, 2, 0], "positions restart per sample");
    assert_eq!(row(&b.segment_ids, b, 0), vec![1, 1, 1, 1, 2, 2, 2, 0]);
    // Example 200 has prompt length 2: targets 201 (index 1) is masked, 202 and 203 count.
    assert_eq!(row(&b.target_mask, b, 0), vec![1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
    assert_eq!(row(&b.input_ids, b, 1), vec![300, 301, 302, 303, 304, 400, 401, 9]);
    assert_eq!(row(&b.segment_ids, b, 1), vec![1, 1, 1, 1, 1, 2, 2, 0]);

    // Rows are full: the next sample would not have fitted, and every sample is whole in one row.
    let lens: Vec<usize> = order.iter().map(|&i| examples[i].input_ids.len() - 1).collect();
    let mut next = 0;
    for b in &batches {
        for r in 0..b.batch {
            let segs = row(&b.segment_ids, b, r);
            let used = segs.iter().filter(|s| **s != 0).count();
            let n_segs = *segs.iter().max().unwrap() as usize;
            for s in 1..=n_segs {
                let span: Vec<usize> = (0..b.seq).filter(|&i| segs[i] == s as u32).collect();
                assert_eq!(span.len(), lens[next], "sample {next} whole");
                assert_eq!(span.last().unwrap() - span[0] + 1, span.len(), "contiguous");
                next += 1;
            }
            if next < lens.len() {
                assert!(used + lens[next] > b.seq, "row {r} could have taken sample {next}");
            }
        }
    }
    assert_eq!(next, examples.len());
    let targets: usize = batches.iter().map(|b| b.target_tokens).sum();
    let expected: usize = examples.iter().map(|e| e.target_count()).sum();
    assert_eq!(targets, expected);
    assert_eq!(batches[0].target_tokens as f32, batches[0].target_mask.iter().sum::<f32>());
}

#[test]
fn packing_follows_the_given_order_and_is_deterministic() {
    let examples = vec![ex(100, 5, 1), ex(200, 4, 2), ex(300, 6, 0)];
    let spec = BatchSpec { batch_size: 4, max_seq_length: 8, packing: true, pad_id: 0 };
    let a = make_batches(&examples, &[2, 0, 1], &spec);
    assert_eq!(a, make_batches(&examples, &[2, 0, 1], &spec));
    assert_eq!(a[0].input_ids[0], 300);
    assert_eq!(a[0].input_ids[8], 100, "sample 0 does not fit after sample 2 (5 + 4 > 8)");
}

#[test]
fn padding_groups_by_length_within_windows() {
    let examples = vec![ex(100, 3, 0), ex(200, 9, 0), ex(300, 5, 0), ex(400, 2, 0), ex(500, 6, 0)];
    let order = vec![0, 1, 2, 3, 4];
    let spec = BatchSpec { batch_size: 2, max_seq_length: 64, packing: false, pad_id: 7 };
    let batches = make_batches(&examples, &order, &spec);
    // One window (64 * 2 ≥ 5): sorted longest first → [200, 500], [300, 100], [400].
    let firsts: Vec<Vec<u32>> =
        batches.iter().map(|b| (0..b.batch).map(|r| b.input_ids[r * b.seq]).collect()).collect();
    assert_eq!(firsts, vec![vec![200, 500], vec![300, 100], vec![400]]);
    let seqs: Vec<usize> = batches.iter().map(|b| b.seq).collect();
    assert_eq!(seqs, vec![8, 4, 1], "each batch is padded to its longest sample");
    let b = &batches[0];
    assert_eq!(row(&b.input_ids, b, 1), vec![500, 501, 502, 503, 504, 7, 7, 7]);
    assert_eq!(row(&b.targets, b, 1), vec![501, 502, 503, 504, 505, 0, 0, 0]);
    assert_eq!(row(&b.target_mask, b, 1), vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(row(&b.positions, b, 1), vec![0, 1, 2, 3, 4, 0, 0, 0]);
    assert_eq!(row(&b.segment_ids, b, 1), vec![1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(b.target_tokens, 8 + 5);

    // Windows keep their order: with batch_size 1 a window is 64 samples.
    let many: Vec<Example> = (0..130).map(|i| ex(1000 + 10 * i, 2 + (i as usize % 5), 0)).collect();
    let order: Vec<usize> = (0..130).collect();
    let bs = make_batches(&many, &order, &BatchSpec { batch_size: 1, max_seq_length: 64, packing: false, pad_id: 0 });
    assert_eq!(bs.len(), 130);
    let window = |b: &Batch| ((b.input_ids[0] - 1000) / 10) as usize / 64;
    assert!(bs.windows(2).all(|w| window(&w[0]) <= window(&w[1])));
    assert!(bs[..64].windows(2).all(|w| w[0].seq >= w[1].seq), "sorted within the window");
}

#[test]
fn samples_longer_than_the_limit_are_cut_and_tiny_ones_skipped() {
    let examples = vec![ex(100, 12, 0), ex(200, 1, 0)];
    for packing in [true, false] {
        let b = make_batches(&examples, &[0, 1], &BatchSpec { batch_size: 2, max_seq_length: 8, packing, pad_id: 0 });
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].batch, b[0].seq), (1, 8));
        assert_eq!(b[0].targets[7], 108);
    }
}

#[test]
fn split_validation_is_deterministic() {
    let examples: Vec<Example> = (0..20).map(|i| ex(i * 10, 3, 0)).collect();
    let (t1, v1) = split_validation(examples.clone(), 0.2, 42);
    let (t2, v2) = split_validation(examples.clone(), 0.2, 42);
    assert_eq!((t1.len(), v1.len()), (16, 4));
    assert_eq!(v1, v2);
    assert_eq!(t1, t2);
    let (_, v3) = split_validation(examples.clone(), 0.2, 7);
    assert_ne!(v1, v3, "another seed, another split");
    // Nothing lost or duplicated; both keep the original order.
    let mut all: Vec<u32> = t1.iter().chain(&v1).map(|e| e.input_ids[0]).collect();
    assert!(t1.windows(2).all(|w| w[0].input_ids[0] < w[1].input_ids[0]));
    all.sort();
    assert_eq!(all, (0..20).map(|i| i * 10).collect::<Vec<_>>());

    assert_eq!(split_validation(examples.clone(), 0.001, 1).1.len(), 1, "at least one");
    assert_eq!(split_validation(examples.clone(), 1.0, 1).0.len(), 1, "never all");
    assert_eq!(split_validation(examples.clone(), 0.0, 1).1.len(), 0);
    assert_eq!(split_validation(examples[..1].to_vec(), 0.5, 1).1.len(), 0);
}
