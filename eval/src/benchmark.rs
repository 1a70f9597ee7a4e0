//! The vocabulary of a benchmark run: what a benchmark is ([`Benchmark`], its [`Item`]s and their
//! ground [`Truth`]), which family and scoring rule it follows ([`TaskFamily`], [`Task`],
//! [`McRule`]), how its prompts are asked ([`PromptStyle`]) and what scoring returns
//! ([`Scored`]). Plain types, shared by the suites that build and run benchmarks
//! ([`crate::suites`]), the paper's numbers ([`crate::paper`]), reports ([`crate::report`]) and
//! scoring without a model ([`crate::score`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use blip3_data::readers::eval_data::Id;

use crate::answers::Failure;
use crate::engine::Request;
use crate::metrics::safety::SafetySplit;
use crate::metrics::vqa::Processor;

/// How captioning and VQA questions are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// OpenFlamingo few-shot prompts for base models (the paper's protocol).
    FewShot,
    /// Instructions through the Phi-3 chat template, for instruct models.
    Chat,
}

impl PromptStyle {
    /// `few-shot` or `chat`.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptStyle::FewShot => "few-shot",
            PromptStyle::Chat => "chat",
        }
    }
}

/// The benchmark families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskFamily {
    /// Captioning.
    Caption,
    /// Open-ended VQA.
    Vqa,
    /// POPE yes/no hallucination probing.
    Pope,
    /// Multiple choice.
    Mc,
    /// VLGuard safety.
    Safety,
}

impl TaskFamily {
    /// The family's name (`caption`, `vqa`, `pope`, `mc`, `safety`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskFamily::Caption => "caption",
            TaskFamily::Vqa => "vqa",
            TaskFamily::Pope => "pope",
            TaskFamily::Mc => "mc",
            TaskFamily::Safety => "safety",
        }
    }
}

/// How multiple-choice answers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McRule {
    /// VLMEvalKit's `can_infer` letter extraction (MMBench, SEED, MMStar, AI2D).
    Extract,
    /// lmms-eval's ScienceQA rule ([`crate::metrics::mc::scienceqa_correct`]).
    ScienceQa,
}

/// A benchmark's task and scoring rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Captioning, scored like pycocoevalcap.
    Caption,
    /// VQA accuracy with the given answer processor.
    Vqa(Processor),
    /// POPE with LLaVA's answer parsing.
    Pope,
    /// Multiple choice; `circular` adds CircularEval over the rotations.
    Mc {
        /// The judging rule.
        rule: McRule,
        /// Whether rotations were asked and CircularEval applies.
        circular: bool,
    },
    /// VLGuard attack success rate and helpfulness.
    Safety,
}

impl Task {
    /// The task's family.
    pub fn family(&self) -> TaskFamily {
        match self {
            Task::Caption => TaskFamily::Caption,
            Task::Vqa(_) => TaskFamily::Vqa,
            Task::Pope => TaskFamily::Pope,
            Task::Mc { .. } => TaskFamily::Mc,
            Task::Safety => TaskFamily::Safety,
        }
    }

    /// The metric quoted first (and compared with the paper).
    pub fn primary_metric(&self) -> &'static str {
        match self {
            Task::Caption => "CIDEr",
            Task::Vqa(_) => "overall",
            Task::Pope => "f1",
            Task::Mc { circular: true, .. } => "circular_accuracy",
            Task::Mc { .. } => "accuracy",
            Task::Safety => "asr",
        }
    }

    /// The reference tool the scores reproduce, with its scale.
    pub fn scorer(&self) -> String {
        match self {
            Task::Caption => "pycocoevalcap 1.2 (PTB tokenizer; Bleu_1..4, ROUGE_L, CIDEr-D as \
                              fractions, CIDEr 0.93 = 93 in papers)"
                .into(),
            Task::Vqa(p) => format!(
                "VQA accuracy, {p:?} answer processing; overall and perAnswerType in percent \
                 rounded to 2 decimals as vqaEval.py reports them, accuracy as a fraction"
            ),
            Task::Pope => "LLaVA eval_pope.py (fractions)".into(),
            Task::Mc {
                rule: McRule::Extract,
                ..
            } => "VLMEvalKit can_infer exact matching, CircularEval (fractions)".into(),
            Task::Mc {
                rule: McRule::ScienceQa,
                ..
            } => "lmms-eval scienceqa_img rule (fraction)".into(),
            Task::Safety => "VLGuard check_success_attack refusal rules (fractions)".into(),
        }
    }
}

/// The ground truth of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    /// A captioned image.
    Caption {
        /// The image id (results files are keyed by it).
        image_id: Id,
        /// The reference captions.
        refs: Vec<String>,
    },
    /// A VQA question.
    Vqa {
        /// The human answers.
        answers: Vec<String>,
        /// `answer_type`, when annotated.
        answer_type: Option<String>,
    },
    /// A POPE question.
    Pope {
        /// `true` for "yes".
        label: bool,
        /// The POPE category.
        category: Option<String>,
    },
    /// One (possibly rotated) multiple-choice question.
    Mc {
        /// The correct letter as shown.
        answer: char,
        /// The option texts as shown, lettered from `A`.
        options: Vec<String>,
        /// The question the rotation belongs to (CircularEval group).
        group: u64,
        /// The rotation (0 = the original order).
        rotation: usize,
        /// The question's category.
        category: Option<String>,
    },
    /// A VLGuard prompt.
    Safety {
        /// Which split it belongs to.
        split: SafetySplit,
    },
}

/// One benchmark item: what to ask and what the answer is scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The generation request.
    pub request: Request,
    /// The ground truth.
    pub truth: Truth,
}

/// A benchmark ready to run.
#[derive(Debug, Clone)]
pub struct Benchmark {
    /// Its name (`coco`, `vqav2`, `pope`, `mmbench`, ...); item keys start with `name/`.
    pub name: String,
    /// Task and scoring rule.
    pub task: Task,
    /// Prompt style.
    pub style: PromptStyle,
    /// In-context examples per prompt (few-shot style).
    pub shots: usize,
    /// The items, in file order, after the limit.
    pub items: Vec<Item>,
    /// Entries left out while loading (missing annotations, bad rows), with where they are.
    pub problems: Vec<(String, Failure)>,
    /// Where in-context examples come from, for the report.
    pub support: Option<String>,
    /// The generation budget.
    pub max_new_tokens: usize,
}

/// The scores of one benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    /// Metric name → value, on the reference tool's scale.
    pub metrics: BTreeMap<String, f64>,
    /// Group (`perAnswerType`, `category:adversarial`, ...) → metric → value.
    pub breakdown: BTreeMap<String, BTreeMap<String, f64>>,
}
