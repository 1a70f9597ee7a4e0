//! Task construction: choosing questions so that answers stay balanced, and planning scenes so that
//! a chosen question gets a chosen answer.
//!
//! Balance is what makes the image necessary. A [`Tally`] counts the answers given so far per
//! template; the primary question of every image takes the least used answer of its template and
//! the scene is then built to make that answer true, and follow-up questions prefer candidates
//! whose answers are rare so far. A text-only model therefore learns nothing better than a uniform
//! guess per template.

use std::collections::BTreeMap;

use super::lang::{self, QKind, Qa};
use super::rng::Rng;
use super::scene::{self, Color, Plan, Scene, Shape, Sign, Sizes};

/// Answer counts per template, for balancing.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: BTreeMap<(String, String), usize>,
}

impl Tally {
    /// Records one use of `answer` for `template`.
    pub(crate) fn add(&mut self, template: &str, answer: &str) {
        *self
            .counts
            .entry((template.to_string(), answer.to_string()))
            .or_default() += 1;
    }

    /// How often `answer` was used for `template`.
    fn count(&self, template: &str, answer: &str) -> usize {
        self.counts
            .get(&(template.to_string(), answer.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The index of the least used of `answers` for `template`; ties are broken at random.
    pub(crate) fn least(&self, template: &str, answers: &[String], rng: &mut Rng) -> usize {
        let min = answers
            .iter()
            .map(|a| self.count(template, a))
            .min()
            .unwrap_or(0);
        let best: Vec<usize> = (0..answers.len())
            .filter(|&i| self.count(template, &answers[i]) == min)
            .collect();
        rng.pick(&best).unwrap_or(0)
    }

    /// Chooses a follow-up question: a random template among the candidates' (other than
    /// `exclude`), then the candidate of that template whose answer is least used. Records it.
    pub(crate) fn follow_up(
        &mut self,
        cands: &[Qa],
        exclude: &[QKind],
        rng: &mut Rng,
    ) -> Option<Qa> {
        let mut kinds: Vec<QKind> = cands
            .iter()
            .map(|q| q.kind)
            .filter(|k| !exclude.contains(k))
            .collect();
        kinds.sort();
        kinds.dedup();
        let kind = rng.pick(&kinds)?;
        let pool: Vec<&Qa> = cands.iter().filter(|q| q.kind == kind).collect();
        let answers: Vec<String> = pool.iter().map(|q| q.answer.clone()).collect();
        let qa = pool[self.least(kind.id(), &answers, rng)].clone();
        self.add(kind.id(), &qa.answer);
        Some(qa)
    }
}

/// Templates of primary questions (those a scene can be planned for), weighted by repetition.
pub(crate) const PRIMARY_KINDS: [QKind; 10] = [
    QKind::Color,
    QKind::Shape,
    QKind::Count,
    QKind::Exist,
    QKind::Side,
    QKind::Half,
    QKind::Color,
    QKind::Count,
    QKind::Exist,
    QKind::Ocr,
];

/// Builds a scene together with a question of `kind` whose answer is the least used so far, and
/// records the answer. OCR questions get an OCR image; the others a shapes scene (under `sign`'s
/// banner if given).
pub(crate) fn primary(
    kind: QKind,
    tally: &mut Tally,
    rng: &mut Rng,
    sizes: Sizes,
    sign: Option<Sign>,
) -> (Scene, Qa) {
    if kind == QKind::Ocr && sign.is_none() {
        let text = scene::ocr_text(rng);
        let s = scene::ocr_scene(rng, sizes, &text);
        tally.add(kind.id(), &text);
        let qa = Qa {
            kind,
            question: lang::OCR_QUESTION.to_string(),
            answer: text,
        };
        return (s, qa);
    }
    // Positions depend on the grid, which depends on the image size: plan an existence question.
    let kind = if matches!(kind, QKind::Where | QKind::Ocr) {
        QKind::Exist
    } else {
        kind
    };
    let answers = kind.answers();
    let pick = tally.least(kind.id(), &answers, rng);
    let answer = answers.get(pick).cloned().unwrap_or_default();
    let shape = Shape::ALL[rng.below(Shape::ALL.len())];
    let color = Color::ALL[rng.below(Color::ALL.len())];
    let (plan, question) = match kind {
        QKind::Color => {
            let color = Color::ALL
                .into_iter()
                .find(|c| c.name() == answer)
                .unwrap_or(color);
            (Plan::ColorOf { shape, color }, lang::color_question(shape))
        }
        QKind::Shape => {
            let shape = Shape::ALL
                .into_iter()
                .find(|s| s.name() == answer)
                .unwrap_or(shape);
            (Plan::ShapeOf { color, shape }, lang::shape_question(color))
        }
        QKind::Count => {
            let count = answer.parse().unwrap_or(1);
            (Plan::Count { shape, count }, lang::count_question(shape))
        }
        QKind::Side => {
            let right = answer == "right";
            (Plan::Side { shape, right }, lang::side_question(shape))
        }
        QKind::Half => {
            let bottom = answer == "bottom";
            (Plan::Half { shape, bottom }, lang::half_question(shape))
        }
        _ => {
            let present = answer == "yes";
            (
                Plan::Exist {
                    color,
                    shape,
                    present,
                },
                lang::exist_question(color, shape),
            )
        }
    };
    let s = scene::shapes_scene(rng, sizes, plan, sign);
    let qa = Qa {
        kind,
        question,
        answer,
    };
    let cands = lang::candidates(&s);
    if cands.contains(&qa) {
        tally.add(kind.id(), &qa.answer);
        return (s, qa);
    }
    // The planner could not keep its promise (it always can with the grids used, so this is a
    // safety net): ask something the scene does answer.
    let qa = tally.follow_up(&cands, &[], rng).unwrap_or(qa);
    (s, qa)
}

/// A multiple-choice question: a stem, four options and the index of the right one.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// The question.
    pub(crate) stem: String,
    /// Four options.
    pub(crate) options: Vec<String>,
    /// Index of the right option (0 = A).
    pub(crate) answer: usize,
}

/// Turns a question into a four-option multiple-choice question with the right option at the
/// least used letter. `None` for templates with fewer than four possible answers.
pub(crate) fn choice(qa: &Qa, tally: &mut Tally, rng: &mut Rng) -> Option<Choice> {
    let mut wrong: Vec<String> = if qa.kind == QKind::Ocr {
        // Look-alike strings: the answer with one character changed.
        let chars: Vec<char> = qa.answer.chars().collect();
        let mut out: Vec<String> = Vec::new();
        let mut tries = 0;
        while out.len() < 3 && tries < 100 && !chars.is_empty() {
            tries += 1;
            let mut c = chars.clone();
            let i = rng.below(c.len());
            c[i] = scene::OCR_CHARS[rng.below(scene::OCR_CHARS.len())] as char;
            let s: String = c.into_iter().collect();
            if s != qa.answer && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    } else {
        qa.kind
            .answers()
            .into_iter()
            .filter(|a| *a != qa.answer)
            .collect()
    };
    if wrong.len() < 3 {
        return None;
    }
    rng.shuffle(&mut wrong);
    let letters: Vec<String> = lang::LETTERS.iter().map(|l| l.to_string()).collect();
    let answer = tally.least("choice", &letters, rng);
    tally.add("choice", &letters[answer]);
    let mut options: Vec<String> = wrong.into_iter().take(3).collect();
    options.insert(answer, qa.answer.clone());
    Some(Choice {
        stem: qa.question.clone(),
        options,
        answer,
    })
}

/// The templates of two-image questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairKind {
    /// "Which image has more circles?" - first or second.
    More,
    /// "Do both images contain a red shape?" - yes or no.
    Both,
    /// "Which image contains a red circle?" - first or second.
    Which,
}

impl PairKind {
    /// A short identifier.
    pub(crate) fn id(self) -> &'static str {
        match self {
            PairKind::More => "pair-more",
            PairKind::Both => "pair-both",
            PairKind::Which => "pair-which",
        }
    }
}

/// Every two-image question the pair answers: (template, question, answer).
pub(crate) fn pair_candidates(a: &Scene, b: &Scene) -> Vec<(PairKind, String, String)> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        let (na, nb) = (a.count_shape(shape), b.count_shape(shape));
        if na != nb {
            let ans = if na > nb { "first" } else { "second" };
            out.push((PairKind::More, lang::more_question(shape), ans.to_string()));
        }
    }
    for color in Color::ALL {
        let both = a.count_color(color) > 0 && b.count_color(color) > 0;
        let ans = if both { "yes" } else { "no" };
        out.push((PairKind::Both, lang::both_question(color), ans.to_string()));
    }
    for color in Color::ALL {
        for shape in Shape::ALL {
            match (a.has(color, shape), b.has(color, shape)) {
                (true, false) => out.push((
                    PairKind::Which,
                    lang::which_question(color, shape),
                    "first".into(),
                )),
                (false, true) => out.push((
                    PairKind::Which,
                    lang::which_question(color, shape),
                    "second".into(),
                )),
                _ => {}
            }
        }
    }
    out
}

/// Builds two scenes and a question of `kind` about them whose answer is the least used so far.
pub(crate) fn pair(
    kind: PairKind,
    tally: &mut Tally,
    rng: &mut Rng,
    sizes: Sizes,
) -> (Scene, Scene, String, String) {
    let binary: Vec<String> = match kind {
        PairKind::Both => vec!["yes".into(), "no".into()],
        _ => vec!["first".into(), "second".into()],
    };
    let answer = binary[tally.least(kind.id(), &binary, rng)].clone();
    let shape = Shape::ALL[rng.below(Shape::ALL.len())];
    let color = Color::ALL[rng.below(Color::ALL.len())];
    let (plan_a, plan_b, question) = match kind {
        PairKind::More => {
            let hi = rng.range(1, 4) as usize;
            let lo = rng.below(hi);
            let (na, nb) = if answer == "first" {
                (hi, lo)
            } else {
                (lo, hi)
            };
            (
                Plan::Count { shape, count: na },
                Plan::Count { shape, count: nb },
                lang::more_question(shape),
            )
        }
        PairKind::Both => {
            let with = Plan::ShapeOf { color, shape };
            let other = Shape::ALL[rng.below(Shape::ALL.len())];
            let with2 = Plan::ShapeOf {
                color,
                shape: other,
            };
            let without = Plan::Without { color };
            let (pa, pb) = if answer == "yes" {
                (with, with2)
            } else {
                match rng.below(3) {
                    0 => (with, without),
                    1 => (without, with),
                    _ => (without, without),
                }
            };
            (pa, pb, lang::both_question(color))
        }
        PairKind::Which => {
            let yes = Plan::Exist {
                color,
                shape,
                present: true,
            };
            let no = Plan::Exist {
                color,
                shape,
                present: false,
            };
            let (pa, pb) = if answer == "first" {
                (yes, no)
            } else {
                (no, yes)
            };
            (pa, pb, lang::which_question(color, shape))
        }
    };
    let a = scene::shapes_scene(rng, sizes, plan_a, None);
    let b = scene::shapes_scene(rng, sizes, plan_b, None);
    let cands = pair_candidates(&a, &b);
    let wanted = (kind, question.clone(), answer.clone());
    if cands.contains(&wanted) {
        tally.add(kind.id(), &answer);
        return (a, b, question, answer);
    }
    // Safety net, as in `primary`.
    match cands.into_iter().next() {
        Some((k, q, ans)) => {
            tally.add(k.id(), &ans);
            (a, b, q, ans)
        }
        None => (a, b, question, answer),
    }
}

/// A follow-up two-image question of a template other than `exclude`, least used answer first.
pub(crate) fn pair_follow_up(
    a: &Scene,
    b: &Scene,
    exclude: PairKind,
    tally: &mut Tally,
    rng: &mut Rng,
) -> Option<(String, String)> {
    let cands: Vec<(PairKind, String, String)> = pair_candidates(a, b)
        .into_iter()
        .filter(|c| c.0 != exclude)
        .collect();
    let kinds: Vec<PairKind> = [PairKind::More, PairKind::Both, PairKind::Which]
        .into_iter()
        .filter(|k| cands.iter().any(|c| c.0 == *k))
        .collect();
    let kind = rng.pick(&kinds)?;
    let pool: Vec<&(PairKind, String, String)> = cands.iter().filter(|c| c.0 == kind).collect();
    let answers: Vec<String> = pool.iter().map(|c| c.2.clone()).collect();
    let chosen = pool[tally.least(kind.id(), &answers, rng)];
    tally.add(kind.id(), &chosen.2);
    Some((chosen.1.clone(), chosen.2.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: Sizes = Sizes {
        min_side: 64,
        max_side: 160,
    };

    #[test]
    fn primaries_are_answered_by_their_scenes_and_balanced() {
        let mut tally = Tally::default();
        let mut per_kind: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for i in 0..700u64 {
            let mut rng = Rng::stream(5, "t", i);
            let kind = PRIMARY_KINDS[i as usize % PRIMARY_KINDS.len()];
            let (s, qa) = primary(kind, &mut tally, &mut rng, SIZES, None);
            assert_eq!(qa.kind, kind);
            assert!(lang::candidates(&s).contains(&qa), "{qa:?}");
            *per_kind.entry((kind.id(), qa.answer.clone())).or_default() += 1;
        }
        // Closed templates: every answer used, counts differ by at most one.
        for kind in [
            QKind::Color,
            QKind::Shape,
            QKind::Count,
            QKind::Exist,
            QKind::Side,
        ] {
            let counts: Vec<usize> = kind
                .answers()
                .iter()
                .map(|a| per_kind.get(&(kind.id(), a.clone())).copied().unwrap_or(0))
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(*lo > 0 && hi - lo <= 1, "{kind:?} {counts:?}");
        }
    }

    #[test]
    fn pairs_are_answered_by_their_scenes() {
        let mut tally = Tally::default();
        for i in 0..150u64 {
            let mut rng = Rng::stream(5, "p", i);
            let kind = [PairKind::More, PairKind::Both, PairKind::Which][i as usize % 3];
            let (a, b, q, ans) = pair(kind, &mut tally, &mut rng, SIZES);
            assert!(pair_candidates(&a, &b).contains(&(kind, q, ans)));
        }
    }

    #[test]
    fn choices_put_the_answer_under_its_letter() {
        let mut tally = Tally::default();
        let mut rng = Rng::new(9);
        let qa = Qa {
            kind: QKind::Color,
            question: "What color is the star?".into(),
            answer: "red".into(),
        };
        let mut letters = [0usize; 4];
        for _ in 0..40 {
            let c = choice(&qa, &mut tally, &mut rng).unwrap();
            assert_eq!(c.options[c.answer], "red");
            assert_eq!(c.options.len(), 4);
            letters[c.answer] += 1;
        }
        assert_eq!(letters, [10; 4]);
        let side = Qa {
            kind: QKind::Side,
            question: "q".into(),
            answer: "left".into(),
        };
        assert!(choice(&side, &mut tally, &mut rng).is_none());
    }
}
