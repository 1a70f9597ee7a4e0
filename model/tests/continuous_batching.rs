//! Continuous batching on the KV cache: sequences prefilled on their own, joined into one batch
//! ([`KvCache::append_rows`], left-padded to a common length) at any point of the others'
//! decoding and dropped when they finish ([`KvCache::retain_rows`]) must get the same logits,
//! step for step, as when each is decoded alone. This is what the server's scheduler relies on.

use blip3_model::{KvCache, MultimodalInput, XGenMM, XGenMMConfig};
use burn::prelude::*;

const TOL: f32 = 1e-4;

fn model() -> XGenMM {
    XGenMMConfig::tiny(250).init(&Device::flex())
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [b, v] = t.dims();
    let flat = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    (0..b).map(|r| flat[r * v..(r + 1) * v].to_vec()).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefills `prompt` alone: its cache and last logits.
fn prefill(m: &XGenMM, prompt: &[u32]) -> (KvCache, Vec<f32>) {
    let mut cache = KvCache::new();
    let input = MultimodalInput {
        input_ids: vec![prompt.to_vec()],
        images: vec![vec![]],
        labels: None,
    };
    let (logits, _) = m.prefill(&input, &mut cache).unwrap();
    (cache, rows(logits).remove(0))
}

/// The logits of `steps` greedy steps of `prompt` decoded alone (prefill logits first).
fn alone(m: &XGenMM, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let (mut cache, logits) = prefill(m, prompt);
    let mut out = vec![logits];
    for _ in 0..steps {
        let next = argmax(out.last().unwrap());
        let l = m.decode_step(&[next], &[true], &mut cache).unwrap();
        out.push(rows(l).remove(0));
    }
    out
}

#[test]
fn joined_and_dropped_rows_decode_as_if_alone() {
    let m = model();
    let a: Vec<u32> = vec![5, 17, 42, 8, 99];
    let b: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 53, 58, 97];
    let c: Vec<u32> = vec![77, 12];
    let (ra, rb, rc) = (alone(&m, &a, 6), alone(&m, &b, 4), alone(&m, &c, 3));

    // A runs alone for two steps, then B joins (B's prompt is longer than A's cache).
    let (mut cache, la) = prefill(&m, &a);
    assert!(max_diff(&la, &ra[0]) <= TOL);
    let mut steps = vec![argmax(&la)];
    for (s, expected) in ra.iter().enumerate().take(3).skip(1) {
        let l = rows(m.decode_step(&steps, &[true], &mut cache).unwrap());
        assert!(max_diff(&l[0], expected) <= TOL, "A alone step {s}");
        steps = vec![argmax(&l[0])];
    }
    let (cb, lb) = prefill(&m, &b);
    assert!(max_diff(&lb, &rb[0]) <= TOL);
    cache.append_rows(cb).unwrap();
    assert_eq!(cache.rows(), 2);
    steps.push(argmax(&lb));
    // Two steps together: A's steps 3..4, B's steps 1..2.
    for s in 0..2 {
        let l = rows(m.decode_step(&steps, &[true, true], &mut cache).unwrap());
        let (da, db) = (max_diff(&l[0], &ra[3 + s]), max_diff(&l[1], &rb[1 + s]));
        assert!(da <= TOL, "A step {} beside B: max diff {da}", 3 + s);
        assert!(db <= TOL, "B step {} beside A: max diff {db}", 1 + s);
        steps = vec![argmax(&l[0]), argmax(&l[1])];
    }

    // C (a short prompt) joins a cache longer than its own.
    let (cc, lc) = prefill(&m, &c);
    cache.append_rows(cc).unwrap();
    steps.push(argmax(&lc));
    let l = rows(
        m.decode_step(&steps, &[true, true, true], &mut cache)
            .unwrap(),
    );
    assert!(
        max_diff(&l[0], &ra[5]) <= TOL,
        "A step 5 in a batch of three"
    );
    assert!(
        max_diff(&l[1], &rb[3]) <= TOL,
        "B step 3 in a batch of three"
    );
    assert!(
        max_diff(&l[2], &rc[1]) <= TOL,
        "C step 1 in a batch of three"
    );
    steps = vec![argmax(&l[0]), argmax(&l[1]), argmax(&l[2])];

    // B finishes: keep A and C (in the order C, A), whose next steps are unchanged.
    let len_before = cache.len();
    cache.retain_rows(&[2, 0]).unwrap();
    assert_eq!(cache.rows(), 2);
    assert!(cache.len() <= len_before);
    let l = rows(
        m.decode_step(&[steps[2], steps[0]], &[true, true], &mut cache)
            .unwrap(),
    );
    assert!(max_diff(&l[0], &rc[2]) <= TOL, "C step 2 after B left");
    assert!(max_diff(&l[1], &ra[6]) <= TOL, "A step 6 after B left");
}

#[test]
fn dropping_the_longest_row_trims_unused_positions() {
    let m = model();
    let (mut cache, _) = prefill(&m, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let (short, _) = prefill(&m, &[11, 12, 13]);
    cache.append_rows(short).unwrap();
    assert_eq!(cache.len(), 10);
    cache.retain_rows(&[1]).unwrap();
    assert_eq!(
        cache.len(),
        3,
        "positions only the dropped row used are freed"
    );
    cache.retain_rows(&[]).unwrap();
    assert!(cache.is_empty());
    assert_eq!(cache.rows(), 0);
}

#[test]
fn bad_row_operations_are_errors() {
    let m = model();
    let (mut cache, _) = prefill(&m, &[1, 2, 3]);
    assert!(cache.retain_rows(&[1]).is_err(), "row 1 of a one-row cache");
    assert!(
        cache.append_rows(KvCache::new()).is_ok(),
        "appending nothing is a no-op"
    );
    assert_eq!(cache.rows(), 1);
    let mut empty = KvCache::new();
    let (other, _) = prefill(&m, &[4, 5]);
    empty.append_rows(other).unwrap();
    assert_eq!((empty.rows(), empty.len()), (1, 2));
}
