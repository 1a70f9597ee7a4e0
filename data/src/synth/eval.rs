//! Held-out evaluation data, drawn from random streams no training file uses: COCO captions,
//! VQAv2 questions and annotations, POPE (random and adversarial negatives) and an MMBench-style
//! TSV with embedded images.

use base64::Engine as _;
use serde::Serialize;

use super::lang::{self, CaptionStyle, QKind};
use super::out::{self, Out};
use super::rng::Rng;
use super::scene::{self, Color, Plan, Scene, Shape};
use super::tasks::{self, Tally};
use super::{Ctx, DatasetEntry, Pictured, SynthConfig, scene_rows};
use crate::error::DataError;

/// Follow-up questions per VQA image, besides the planned one.
const VQA_FOLLOW_UPS: usize = 2;

/// The `info` block of COCO and VQA files.
#[derive(Serialize)]
struct Info {
    description: &'static str,
    url: &'static str,
    version: &'static str,
    year: u32,
    contributor: &'static str,
    date_created: &'static str,
}

/// The corpus's `info` block.
const INFO: Info = Info {
    description: "blip3 synthetic shapes corpus, held-out split",
    url: "https://synth.invalid/",
    version: "1.0",
    year: 2024,
    contributor: "blip3-synth",
    date_created: "2024-01-01",
};

/// A COCO license entry.
#[derive(Serialize)]
struct CocoLicense {
    url: &'static str,
    id: u32,
    name: &'static str,
}

/// A COCO image entry.
#[derive(Serialize)]
struct CocoImage {
    license: u32,
    file_name: String,
    coco_url: String,
    height: u32,
    width: u32,
    date_captured: &'static str,
    flickr_url: String,
    id: u64,
}

/// A COCO caption annotation.
#[derive(Serialize)]
struct CocoAnnotation {
    image_id: u64,
    id: u64,
    caption: String,
}

/// A COCO captions file.
#[derive(Serialize)]
struct CocoCaptions {
    info: Info,
    licenses: Vec<CocoLicense>,
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

/// The VQA `license` block.
#[derive(Serialize)]
struct VqaLicense {
    url: &'static str,
    name: &'static str,
}

/// A VQA question.
#[derive(Serialize)]
struct VqaQuestion {
    image_id: u64,
    question: String,
    question_id: u64,
}

/// A VQAv2 questions file.
#[derive(Serialize)]
struct VqaQuestions {
    info: Info,
    task_type: &'static str,
    data_type: &'static str,
    data_subtype: &'static str,
    license: VqaLicense,
    questions: Vec<VqaQuestion>,
}

/// One of the ten answers of a VQA annotation.
#[derive(Serialize)]
struct VqaAnswer {
    answer: String,
    answer_confidence: &'static str,
    answer_id: u32,
}

/// A VQA annotation.
#[derive(Serialize)]
struct VqaAnnotation {
    question_id: u64,
    image_id: u64,
    question_type: &'static str,
    answer_type: &'static str,
    multiple_choice_answer: String,
    answers: Vec<VqaAnswer>,
}

/// A VQAv2 annotations file.
#[derive(Serialize)]
struct VqaAnnotations {
    info: Info,
    license: VqaLicense,
    data_type: &'static str,
    data_subtype: &'static str,
    annotations: Vec<VqaAnnotation>,
}

/// A POPE line (RUCAIBox layout).
#[derive(Serialize)]
struct PopeRow {
    question_id: u64,
    image: String,
    text: String,
    label: &'static str,
}

/// The license of every image.
const LICENSE: CocoLicense = CocoLicense {
    url: "https://synth.invalid/license",
    id: 1,
    name: "CC0",
};

/// A question with its yes/no label.
type YesNo = (String, bool);

/// The six POPE questions of one image for each category: (question, label).
fn pope_questions(s: &Scene, rng: &mut Rng) -> (Vec<YesNo>, Vec<YesNo>) {
    // Random: present shapes against absent shapes.
    let mut present: Vec<Shape> = s.objects.iter().map(|o| o.shape).collect();
    let mut absent: Vec<Shape> = Shape::ALL
        .into_iter()
        .filter(|&sh| s.count_shape(sh) == 0)
        .collect();
    rng.shuffle(&mut present);
    rng.shuffle(&mut absent);
    let mut random: Vec<YesNo> = present
        .iter()
        .take(3)
        .map(|&sh| (lang::exist_shape_question(sh), true))
        .chain(
            absent
                .iter()
                .take(3)
                .map(|&sh| (lang::exist_shape_question(sh), false)),
        )
        .collect();
    rng.shuffle(&mut random);

    // Adversarial: present objects against swapped colour-shape pairs of the same image.
    let mut objects: Vec<(Color, Shape)> = s.objects.iter().map(|o| (o.color, o.shape)).collect();
    rng.shuffle(&mut objects);
    let mut swaps: Vec<(Color, Shape)> = Vec::new();
    for (i, a) in s.objects.iter().enumerate() {
        for (j, b) in s.objects.iter().enumerate() {
            if i != j && !s.has(a.color, b.shape) {
                swaps.push((a.color, b.shape));
            }
        }
    }
    rng.shuffle(&mut swaps);
    let mut adversarial: Vec<YesNo> = objects
        .iter()
        .take(3)
        .map(|&(c, sh)| (lang::exist_question(c, sh), true))
        .chain(
            swaps
                .iter()
                .take(3)
                .map(|&(c, sh)| (lang::exist_question(c, sh), false)),
        )
        .collect();
    rng.shuffle(&mut adversarial);
    (random, adversarial)
}

/// MMBench question templates with their category and l2-category.
const MMBENCH_KINDS: [(QKind, &str, &str); 5] = [
    (QKind::Color, "color_recognition", "attribute"),
    (QKind::Shape, "shape_recognition", "attribute"),
    (QKind::Count, "object_counting", "counting"),
    (QKind::Where, "object_localization", "spatial"),
    (QKind::Ocr, "ocr", "text"),
];

/// A TSV cell: tabs and line breaks become spaces.
fn cell(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// Writes the MMBench TSV; returns its rows' scenes.
fn mmbench(out: &mut Out, ctx: &Ctx, n: usize) -> Result<Vec<Pictured>, DataError> {
    let mut tally = Tally::default();
    let mut scenes = Vec::new();
    let header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    ];
    let mut tsv = header.join("\t");
    tsv.push('\n');
    for j in 0..n {
        let mut rng = ctx.rng("eval-mmbench", j);
        let (kind, category, l2) = MMBENCH_KINDS[j % MMBENCH_KINDS.len()];
        let (s, qa) = if kind == QKind::Where {
            // Positions are asked about a planned unique shape.
            let shape = Shape::ALL[rng.below(Shape::ALL.len())];
            let color = Color::ALL[rng.below(Color::ALL.len())];
            let s = scene::shapes_scene(&mut rng, ctx.sizes, Plan::ColorOf { shape, color }, None);
            let cands: Vec<lang::Qa> = lang::candidates(&s)
                .into_iter()
                .filter(|q| q.kind == QKind::Where)
                .collect();
            let qa = tally.follow_up(&cands, &[], &mut rng);
            match qa {
                Some(qa) => (s, qa),
                None => tasks::primary(QKind::Color, &mut tally, &mut rng, ctx.sizes, None),
            }
        } else {
            tasks::primary(kind, &mut tally, &mut rng, ctx.sizes, None)
        };
        let Some(choice) = tasks::choice(&qa, &mut tally, &mut rng) else {
            continue;
        };
        let what = format!("eval/mmbench.tsv#{j}");
        let bytes = out.encode(&s, out::format_for(&s), &what)?;
        let image = base64::engine::general_purpose::STANDARD.encode(bytes);
        let hint = if rng.below(4) == 0 {
            if s.objects.is_empty() {
                "The picture shows some letters."
            } else {
                "The picture shows some shapes."
            }
        } else {
            ""
        };
        let mut fields = vec![j.to_string(), cell(&choice.stem), hint.to_string()];
        fields.extend(choice.options.iter().map(|o| cell(o)));
        fields.push(lang::LETTERS[choice.answer].to_string());
        fields.push(category.to_string());
        fields.push(image);
        fields.push("synth".to_string());
        fields.push(l2.to_string());
        fields.push(String::new());
        fields.push("dev".to_string());
        tsv.push_str(&fields.join("\t"));
        tsv.push('\n');
        scenes.push((format!("mmbench.tsv#{j}"), s));
    }
    out.write("eval/mmbench.tsv", tsv.as_bytes())?;
    Ok(scenes)
}

/// Writes `eval/`.
pub(super) fn write(
    out: &mut Out,
    ctx: &Ctx,
    cfg: &SynthConfig,
) -> Result<Vec<DatasetEntry>, DataError> {
    let mut scenes: Vec<Pictured> = Vec::new();
    let mut tally = Tally::default();
    let mut coco_images = Vec::new();
    let mut coco_anns = Vec::new();
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..cfg.eval_images {
        let id = i as u64 + 1;
        let mut rng = ctx.rng("eval-image", i);
        let kind = tasks::PRIMARY_KINDS[i % tasks::PRIMARY_KINDS.len()];
        let (s, first) = tasks::primary(kind, &mut tally, &mut rng, ctx.sizes, None);
        let rel = out.image(
            &format!("eval/images/synth_val_{id:012}"),
            &s,
            out::format_for(&s),
        )?;
        let file_name = out::strip(&rel, "eval/images");
        let mut styles = CaptionStyle::ALL.to_vec();
        rng.shuffle(&mut styles);
        for style in styles.into_iter().take(5) {
            let ann_id = coco_anns.len() as u64 + 1;
            coco_anns.push(CocoAnnotation {
                image_id: id,
                id: ann_id,
                caption: lang::caption(&s, style),
            });
        }
        let cands = lang::candidates(&s);
        let mut asked = vec![first];
        for _ in 0..VQA_FOLLOW_UPS {
            let used: Vec<QKind> = asked.iter().map(|q| q.kind).collect();
            match tally.follow_up(&cands, &used, &mut rng) {
                Some(qa) => asked.push(qa),
                None => break,
            }
        }
        for (k, qa) in asked.into_iter().enumerate() {
            let question_id = id * 1000 + k as u64;
            let answers = (1..=10)
                .map(|n| VqaAnswer {
                    answer: qa.answer.clone(),
                    answer_confidence: "yes",
                    answer_id: n,
                })
                .collect();
            annotations.push(VqaAnnotation {
                question_id,
                image_id: id,
                question_type: qa.kind.question_type(),
                answer_type: qa.kind.answer_type(),
                multiple_choice_answer: qa.answer.clone(),
                answers,
            });
            questions.push(VqaQuestion {
                image_id: id,
                question: qa.question,
                question_id,
            });
        }
        coco_images.push(CocoImage {
            license: 1,
            file_name: file_name.clone(),
            coco_url: format!("https://synth.invalid/val/{file_name}"),
            height: s.height,
            width: s.width,
            date_captured: "2024-01-01 00:00:00",
            flickr_url: format!("https://synth.invalid/val/{file_name}"),
            id,
        });
        scenes.push((out::strip(&rel, "eval"), s));
    }
    let n_captions = coco_anns.len();
    let n_questions = questions.len();
    let coco = CocoCaptions {
        info: INFO,
        licenses: vec![LICENSE],
        images: coco_images,
        annotations: coco_anns,
    };
    out.json("eval/captions.json", &coco, 0)?;
    let license = || VqaLicense {
        url: "https://synth.invalid/license",
        name: "CC0",
    };
    let vqa_q = VqaQuestions {
        info: INFO,
        task_type: "Open-Ended",
        data_type: "synth",
        data_subtype: "val",
        license: license(),
        questions,
    };
    out.json("eval/vqa_questions.json", &vqa_q, 0)?;
    let vqa_a = VqaAnnotations {
        info: INFO,
        license: license(),
        data_type: "synth",
        data_subtype: "val",
        annotations,
    };
    out.json("eval/vqa_annotations.json", &vqa_a, 0)?;

    // POPE images: three or four objects with distinct shapes and colours, six questions each.
    let mut random_rows = Vec::new();
    let mut adversarial_rows = Vec::new();
    for j in 0..cfg.pope_images {
        let id = (cfg.eval_images + j) as u64 + 1;
        let mut rng = ctx.rng("eval-pope", j);
        let count = rng.range(3, 4) as usize;
        let s = scene::shapes_scene(&mut rng, ctx.sizes, Plan::Distinct { count }, None);
        let rel = out.image(
            &format!("eval/images/synth_val_{id:012}"),
            &s,
            out::format_for(&s),
        )?;
        let file_name = out::strip(&rel, "eval/images");
        let (random, adversarial) = pope_questions(&s, &mut rng);
        for (rows, qs) in [
            (&mut random_rows, random),
            (&mut adversarial_rows, adversarial),
        ] {
            for (text, yes) in qs {
                rows.push(PopeRow {
                    question_id: rows.len() as u64 + 1,
                    image: file_name.clone(),
                    text,
                    label: if yes { "yes" } else { "no" },
                });
            }
        }
        scenes.push((out::strip(&rel, "eval"), s));
    }
    out.jsonl("eval/pope/synth_pope_random.json", &random_rows)?;
    out.jsonl("eval/pope/synth_pope_adversarial.json", &adversarial_rows)?;

    let mm_scenes = mmbench(out, ctx, cfg.mmbench_questions)?;
    let n_mmbench = mm_scenes.len();
    scenes.extend(mm_scenes);

    // Held-out preference pairs on the caption/VQA images, made like the DPO training pairs (the
    // rejected answer hallucinates), for likelihood-based hallucination checks.
    let mut pref_rows = Vec::new();
    for (i, (rel, s)) in scenes.iter().take(cfg.eval_images).enumerate() {
        let mut rng = ctx.rng("eval-pref", i);
        let sm = super::prefs::sample(s, i, &mut rng);
        pref_rows.push(super::prefs::PairRow {
            id: format!("eval_pref_{:06}", i + 1),
            prompt: sm.prompt,
            image: rel.clone(),
            chosen: sm.chosen,
            rejected: sm.rejected,
        });
    }
    out.jsonl("eval/dpo_pairs.jsonl", &pref_rows)?;

    let rows = scene_rows(&scenes);
    out.jsonl("eval/scenes.jsonl", &rows)?;

    let images = Some("eval/images".to_string());
    let pope = |cat: &str, records: usize| DatasetEntry {
        name: format!("eval/pope_{cat}"),
        format: "pope-jsonl".into(),
        files: vec![format!("eval/pope/synth_pope_{cat}.json")],
        records,
        images: cfg.pope_images,
        image_root: images.clone(),
    };
    Ok(vec![
        DatasetEntry {
            name: "eval/captions".into(),
            format: "coco-captions".into(),
            files: vec!["eval/captions.json".into()],
            records: n_captions,
            images: cfg.eval_images,
            image_root: images.clone(),
        },
        DatasetEntry {
            name: "eval/vqav2".into(),
            format: "vqav2".into(),
            files: vec![
                "eval/vqa_questions.json".into(),
                "eval/vqa_annotations.json".into(),
            ],
            records: n_questions,
            images: cfg.eval_images,
            image_root: images.clone(),
        },
        pope("random", random_rows.len()),
        pope("adversarial", adversarial_rows.len()),
        DatasetEntry {
            name: "eval/mmbench".into(),
            format: "mmbench-tsv".into(),
            files: vec!["eval/mmbench.tsv".into()],
            records: n_mmbench,
            images: n_mmbench,
            image_root: None,
        },
        DatasetEntry {
            name: "eval/dpo_pairs".into(),
            format: "dpo-jsonl".into(),
            files: vec!["eval/dpo_pairs.jsonl".into()],
            records: pref_rows.len(),
            images: pref_rows.len(),
            image_root: Some("eval".into()),
        },
        DatasetEntry {
            name: "eval/scenes".into(),
            format: "scenes-jsonl".into(),
            files: vec!["eval/scenes.jsonl".into()],
            records: rows.len(),
            images: rows.len(),
            image_root: Some("eval".into()),
        },
    ])
}
