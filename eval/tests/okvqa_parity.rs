//! Parity of `metrics::okvqa` with OpenFlamingo's OK-VQA post-processing (nltk 3.8.1,
//! inflection 0.5.1), on `tests/fixtures/metrics/okvqa_fixture.json` made by
//! `make_okvqa_fixture.py`: every output, and every token and tag on the way, must be identical.

mod common;

use common::strings;

use blip3_eval::metrics::okvqa::{OkVqaStemmer, postprocess_ok_vqa_generation};
use blip3_eval::prompts::postprocess_vqa;

use serde_json::Value;

#[test]
fn okvqa_postprocessing_matches_openflamingo() {
    let path = blip3_fixtures::fixture("metrics").join("okvqa_fixture.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).expect("fixture JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 300, "only {} cases", cases.len());

    let stemmer = OkVqaStemmer::new().expect("embedded data loads");
    let mut failures = Vec::new();
    for case in cases {
        let input = case["input"].as_str().expect("input");
        let want = case["output"].as_str().expect("output");
        let cut = postprocess_vqa(input);
        let tokens = stemmer.word_tokenize(&cut);
        let want_tokens = strings(&case["tokens"]);
        if tokens != want_tokens {
            failures.push(format!(
                "{input:?}: tokens {tokens:?}, reference {want_tokens:?}"
            ));
            continue;
        }
        let tags = stemmer.pos_tag(&tokens);
        let want_tags = strings(&case["tags"]);
        if tags != want_tags {
            failures.push(format!("{input:?}: tags {tags:?}, reference {want_tags:?}"));
            continue;
        }
        let got = stemmer.postprocess(input);
        if got != want {
            failures.push(format!("{input:?}: {got:?}, reference {want:?}"));
        }
        assert_eq!(postprocess_ok_vqa_generation(input), got);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn okvqa_processor_stems_predictions_only() {
    use blip3_eval::metrics::vqa::{Processor, accuracy};
    let answers = vec!["dog"; 10];
    // "Dogs" is a plural noun: singularized to "Dog", then normalised to "dog".
    let stemmed = accuracy(
        "Dogs Question: what?",
        &answers,
        Processor::OpenFlamingoOkVqa,
    );
    assert_eq!(stemmed, Ok(1.0));
    let plain = accuracy("Dogs Question: what?", &answers, Processor::OpenFlamingo);
    assert_eq!(plain, Ok(0.0));
    // Ground truth is not stemmed: "dogs" in the answers never matches a stemmed "dog".
    let plural_truth = vec!["dogs"; 10];
    assert_eq!(
        accuracy("dogs", &plural_truth, Processor::OpenFlamingoOkVqa),
        Ok(0.0)
    );
}
