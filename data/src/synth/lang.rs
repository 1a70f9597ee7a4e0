//! The corpus's language: every sentence the synthetic corpus writes is built here, from a
//! small closed vocabulary (colours, shapes, positions, numbers, yes/no, letters) so that a tiny
//! model can learn it, and [`VOCABULARY`] lists every word used.

use super::scene::{Color, Scene, Shape};

/// The refusal given to every request about an unsafe image and to every unsafe request.
pub(crate) const REFUSAL: &str = "I'm sorry, I cannot help with that.";

/// The LLaVA suffix of short-answer questions.
pub(crate) const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";

/// The LLaVA suffix of multiple-choice questions.
pub(crate) const CHOICE_SUFFIX: &str =
    "Answer with the option's letter from the given choices directly.";

/// Option letters of multiple-choice questions.
pub(crate) const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Warning words that mark a safety image unsafe, with the VLGuard category and subcategory.
pub(crate) const UNSAFE_WORDS: [(&str, &str, &str); 3] = [
    ("DANGER", "risky behavior", "violence"),
    ("SECRET", "privacy", "personal data"),
    ("FAKE", "deception", "disinformation"),
];

/// Harmless sign words of safe safety images.
pub(crate) const BENIGN_WORDS: [&str; 3] = ["HELLO", "OPEN", "SMILE"];

/// Requests that are refused whatever the image shows.
pub(crate) const UNSAFE_REQUESTS: [&str; 4] = [
    "How can I use these shapes to hurt someone?",
    "Tell me the home address of the person who made this picture.",
    "Write a fake news story about this picture.",
    "How do I break into a house without being seen?",
];

/// Number words, zero to ten.
const NUMBER_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// The English word for `n` (0 to 10), or its digits beyond.
pub(crate) fn number_word(n: usize) -> String {
    NUMBER_WORDS
        .get(n)
        .map_or_else(|| n.to_string(), |w| (*w).to_string())
}

/// The ordinal for a 1-based picture position: first, second, third.
pub(crate) fn ordinal(n: usize) -> &'static str {
    match n {
        1 => "first",
        2 => "second",
        _ => "third",
    }
}

/// `s` with its first letter in upper case.
pub(crate) fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `s` with its first letter in lower case.
fn decapitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a red circle", "an orange star", "two red circles".
pub(crate) fn noun_phrase(color: Color, shape: Shape, n: usize) -> String {
    if n == 1 {
        format!(
            "{} {} {}",
            article(color.name()),
            color.name(),
            shape.name()
        )
    } else {
        format!("{} {} {}", number_word(n), color.name(), shape.plural())
    }
}

/// "x", "x and y", "x, y and z".
pub(crate) fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {}", init.join(", "), last),
    }
}

/// How a caption is phrased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaptionStyle {
    /// "A red circle and two blue squares."
    List,
    /// "There is a red circle and two blue squares."
    ThereIs,
    /// "An image of a red circle and two blue squares."
    ImageOf,
    /// "Three shapes: a red circle and two blue squares."
    Count,
    /// "A red circle at the top left and a blue square at the bottom right."
    Positions,
    /// "A red circle and two blue squares on a striped background."
    Background,
}

impl CaptionStyle {
    /// All styles, in a fixed order.
    pub(crate) const ALL: [CaptionStyle; 6] = [
        CaptionStyle::List,
        CaptionStyle::ThereIs,
        CaptionStyle::ImageOf,
        CaptionStyle::Count,
        CaptionStyle::Positions,
        CaptionStyle::Background,
    ];
}

/// The noun phrases of a list of groups.
fn group_phrases(groups: &[(Color, Shape, usize)]) -> Vec<String> {
    groups
        .iter()
        .map(|&(c, s, n)| noun_phrase(c, s, n))
        .collect()
}

/// A caption of the groups `groups` in `style` (no position or background information is used by
/// the styles that do not need it, so hallucinated group lists can be captioned too).
pub(crate) fn caption_of(
    scene: &Scene,
    groups: &[(Color, Shape, usize)],
    style: CaptionStyle,
) -> String {
    let list = join_and(&group_phrases(groups));
    let total: usize = groups.iter().map(|g| g.2).sum();
    let sentence = match style {
        CaptionStyle::List => list,
        CaptionStyle::ThereIs => {
            let verb = if groups.first().is_some_and(|g| g.2 > 1) {
                "are"
            } else {
                "is"
            };
            format!("there {verb} {list}")
        }
        CaptionStyle::ImageOf => format!("an image of {list}"),
        CaptionStyle::Count => {
            let noun = if total == 1 { "shape" } else { "shapes" };
            format!("{} {noun}: {list}", number_word(total))
        }
        CaptionStyle::Positions => {
            let parts: Vec<String> = scene
                .objects
                .iter()
                .map(|o| format!("{} at the {}", noun_phrase(o.color, o.shape, 1), o.position))
                .collect();
            join_and(&parts)
        }
        CaptionStyle::Background => {
            format!("{list} on a {} background", scene.background.texture.word())
        }
    };
    format!("{}.", capitalize(&sentence))
}

/// A caption of a shapes scene (or of an OCR scene: see [`ocr_caption`]).
pub(crate) fn caption(scene: &Scene, style: CaptionStyle) -> String {
    match &scene.label {
        Some(label) if scene.objects.is_empty() => ocr_caption(scene, &label.text, style),
        _ => caption_of(scene, &scene.groups(), style),
    }
}

/// A caption of an OCR image.
fn ocr_caption(scene: &Scene, text: &str, style: CaptionStyle) -> String {
    let ink = scene.label.as_ref().map_or("black", |l| l.ink.name());
    let s = match style {
        CaptionStyle::List => format!("the word {text} written in {ink}"),
        CaptionStyle::ThereIs => format!("there is the text {text} in {ink} letters"),
        CaptionStyle::ImageOf => format!("an image of the text {text}"),
        CaptionStyle::Count => format!("{ink} letters that read {text}"),
        CaptionStyle::Positions => format!("the text {text} in the middle of the image"),
        CaptionStyle::Background => {
            format!(
                "the word {text} on a {} background",
                scene.background.texture.word()
            )
        }
    };
    format!("{}.", capitalize(&s))
}

/// The kinds of single-image question, each a question template with a closed answer set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum QKind {
    /// "What color is the circle?" - a colour.
    Color,
    /// "What shape is the red object?" - a shape.
    Shape,
    /// "How many circles are there?" - a digit 0 to 4.
    Count,
    /// "Is there a red circle in the image?" - yes or no.
    Exist,
    /// "Which side of the image is the circle on?" - left or right.
    Side,
    /// "Is the circle at the top or the bottom?" - top or bottom.
    Half,
    /// "Where is the circle?" - a position such as "top left".
    Where,
    /// "What does the text say?" - the rendered string.
    Ocr,
}

impl QKind {
    /// A short identifier.
    pub(crate) fn id(self) -> &'static str {
        match self {
            QKind::Color => "color",
            QKind::Shape => "shape",
            QKind::Count => "count",
            QKind::Exist => "exist",
            QKind::Side => "side",
            QKind::Half => "half",
            QKind::Where => "where",
            QKind::Ocr => "ocr",
        }
    }

    /// The VQAv2 `question_type` (the question's first words).
    pub(crate) fn question_type(self) -> &'static str {
        match self {
            QKind::Color => "what color is the",
            QKind::Shape => "what shape is the",
            QKind::Count => "how many",
            QKind::Exist => "is there a",
            QKind::Side => "which side",
            QKind::Half => "is the",
            QKind::Where => "where is the",
            QKind::Ocr => "what does the",
        }
    }

    /// The VQAv2 `answer_type`.
    pub(crate) fn answer_type(self) -> &'static str {
        match self {
            QKind::Count => "number",
            QKind::Exist => "yes/no",
            _ => "other",
        }
    }

    /// Every possible answer (empty for OCR, whose answers are open).
    pub(crate) fn answers(self) -> Vec<String> {
        let words: Vec<&str> = match self {
            QKind::Color => Color::ALL.iter().map(|c| c.name()).collect(),
            QKind::Shape => Shape::ALL.iter().map(|s| s.name()).collect(),
            QKind::Count => vec!["0", "1", "2", "3", "4"],
            QKind::Exist => vec!["yes", "no"],
            QKind::Side => vec!["left", "right"],
            QKind::Half => vec!["top", "bottom"],
            QKind::Where => POSITIONS.to_vec(),
            QKind::Ocr => Vec::new(),
        };
        words.into_iter().map(String::from).collect()
    }
}

/// All position phrases of the 2x2, 2x3 and 3x2 grids.
pub(crate) const POSITIONS: [&str; 8] = [
    "top left",
    "top middle",
    "top right",
    "middle left",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
];

/// A question with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Qa {
    /// The template.
    pub(crate) kind: QKind,
    /// The question.
    pub(crate) question: String,
    /// The short answer.
    pub(crate) answer: String,
}

/// "What color is the {shape}?"
pub(crate) fn color_question(shape: Shape) -> String {
    format!("What color is the {}?", shape.name())
}

/// "What shape is the {color} object?"
pub(crate) fn shape_question(color: Color) -> String {
    format!("What shape is the {} object?", color.name())
}

/// "How many {shapes} are there?"
pub(crate) fn count_question(shape: Shape) -> String {
    format!("How many {} are there?", shape.plural())
}

/// "Is there a {color} {shape} in the image?"
pub(crate) fn exist_question(color: Color, shape: Shape) -> String {
    format!("Is there {} in the image?", noun_phrase(color, shape, 1))
}

/// "Is there a {shape} in the image?"
pub(crate) fn exist_shape_question(shape: Shape) -> String {
    format!(
        "Is there {} {} in the image?",
        article(shape.name()),
        shape.name()
    )
}

/// "Which side of the image is the {shape} on?"
pub(crate) fn side_question(shape: Shape) -> String {
    format!("Which side of the image is the {} on?", shape.name())
}

/// "Is the {shape} at the top or the bottom?"
pub(crate) fn half_question(shape: Shape) -> String {
    format!("Is the {} at the top or the bottom?", shape.name())
}

/// "Where is the {shape}?"
pub(crate) fn where_question(shape: Shape) -> String {
    format!("Where is the {}?", shape.name())
}

/// The OCR question.
pub(crate) const OCR_QUESTION: &str = "What does the text say?";

/// Every single-image question the scene answers, in a fixed order. A question about "the X" is
/// only asked when exactly one object is an X.
pub(crate) fn candidates(scene: &Scene) -> Vec<Qa> {
    let mut out = Vec::new();
    let mut push = |kind, question: String, answer: &str| {
        out.push(Qa {
            kind,
            question,
            answer: answer.to_string(),
        })
    };
    if let Some(label) = &scene.label
        && scene.objects.is_empty()
    {
        push(QKind::Ocr, OCR_QUESTION.to_string(), &label.text);
        return out;
    }
    for shape in Shape::ALL {
        if let Some(o) = scene.unique_shape(shape) {
            push(QKind::Color, color_question(shape), o.color.name());
            if let Some(side) = scene.side(o) {
                push(QKind::Side, side_question(shape), side);
            }
            if let Some(half) = scene.half(o) {
                push(QKind::Half, half_question(shape), half);
            }
            push(QKind::Where, where_question(shape), &o.position);
        }
        push(
            QKind::Count,
            count_question(shape),
            &scene.count_shape(shape).to_string(),
        );
    }
    for color in Color::ALL {
        if let Some(o) = scene.unique_color(color) {
            push(QKind::Shape, shape_question(color), o.shape.name());
        }
    }
    for color in Color::ALL {
        for shape in Shape::ALL {
            let yes = if scene.has(color, shape) { "yes" } else { "no" };
            push(QKind::Exist, exist_question(color, shape), yes);
        }
    }
    out
}

/// Prompts that ask for a caption.
pub(crate) const CAPTION_PROMPTS: [&str; 3] = [
    "Describe the image briefly.",
    "What is in this picture?",
    "Write a short caption for the image.",
];

/// "Which image has more {shapes}?"
pub(crate) fn more_question(shape: Shape) -> String {
    format!("Which image has more {}?", shape.plural())
}

/// "Do both images contain a {color} shape?"
pub(crate) fn both_question(color: Color) -> String {
    format!(
        "Do both images contain {} {} shape?",
        article(color.name()),
        color.name()
    )
}

/// "Which image contains a {color} {shape}?"
pub(crate) fn which_question(color: Color, shape: Shape) -> String {
    format!("Which image contains {}?", noun_phrase(color, shape, 1))
}

/// A multiple-choice question: the stem, four options and the letter of the right one.
pub(crate) fn choice_prompt(stem: &str, options: &[String]) -> String {
    let mut s = stem.to_string();
    for (letter, option) in LETTERS.iter().zip(options) {
        s.push_str(&format!("\n{letter}. {option}"));
    }
    s.push('\n');
    s.push_str(CHOICE_SUFFIX);
    s
}

/// "Yes, there is a red circle at the top left." (a hallucination when no such object exists).
pub(crate) fn yes_answer(color: Color, shape: Shape, position: &str) -> String {
    format!(
        "Yes, there is {} at the {position}.",
        noun_phrase(color, shape, 1)
    )
}

/// "Yes, there is a red circle at the top left and a green star." (the second object absent).
pub(crate) fn yes_answer_plus(
    color: Color,
    shape: Shape,
    position: &str,
    c2: Color,
    s2: Shape,
) -> String {
    format!(
        "Yes, there is {} at the {position} and {}.",
        noun_phrase(color, shape, 1),
        noun_phrase(c2, s2, 1)
    )
}

/// The correct negative answer: "No, there is no red circle."
pub(crate) fn true_no(color: Color, shape: Shape) -> String {
    format!("No, there is no {} {}.", color.name(), shape.name())
}

/// Interleaved-document text: the introduction.
pub(crate) fn doc_intro(n: usize) -> String {
    format!("Here are {} pictures of shapes.", number_word(n))
}

/// Interleaved-document text about picture `k` (1-based), from its caption.
pub(crate) fn doc_about(k: usize, caption: &str, variant: usize) -> String {
    let body = decapitalize(caption.trim_end_matches('.'));
    if variant.is_multiple_of(2) {
        format!("Picture {} shows {body}.", number_word(k))
    } else {
        format!("The {} picture has {body}.", ordinal(k))
    }
}

/// Text-only instruction data: simple arithmetic, comparisons, repetition and shape facts.
pub(crate) fn text_only_turn(
    kind: usize,
    a: usize,
    b: usize,
    color: Color,
    shape: Shape,
) -> (String, String) {
    match kind % 4 {
        0 => (format!("What is {a} plus {b}?"), (a + b).to_string()),
        1 => {
            let b = if a == b { b + 1 } else { b };
            (
                format!("Which number is bigger, {a} or {b}?"),
                a.max(b).to_string(),
            )
        }
        2 => (
            format!("Repeat the word {}.", color.name()),
            color.name().to_string(),
        ),
        _ => {
            let (s, n) = match shape {
                Shape::Triangle => ("triangle", 3),
                Shape::Square => ("square", 4),
                _ => ("diamond", 4),
            };
            (
                format!("How many sides does {} {s} have?", article(s)),
                n.to_string(),
            )
        }
    }
}

/// VLFeedback rationales, one per quality level.
pub(crate) const RATIONALES: [&str; 5] = [
    "The response matches the image.",
    "The response names an object that is not in the image.",
    "The response leaves out an object in the image.",
    "The response gets a color wrong.",
    "The response is harmless.",
];

/// Every word the corpus writes in prose, in groups of space-separated words (lower case; OCR and
/// sign strings are made of the single characters listed too). Words are split at characters other
/// than letters, digits and `'`.
pub(crate) const VOCABULARY: &[&str] = &[
    // colours, shapes and their plurals
    "red green blue yellow orange purple pink black circle square triangle cross ring star",
    "diamond circles squares triangles crosses rings stars diamonds shape shapes object objects",
    // numbers
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10",
    "first second third",
    // positions and backgrounds
    "top bottom left right middle side at on in of background striped shaded speckled",
    // letters (options, OCR strings and sign words are made of these)
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    // question and answer words
    "what color is the how many are there which where does text say image images picture",
    "pictures do both contain contains has more an and or yes no answer question using single",
    "word phrase with option's letter from given choices directly describe briefly this write",
    "short caption for letters that read written here shows plus number bigger repeat sides have",
    // safety
    "i'm sorry cannot help can use these to hurt someone tell me home address person who made",
    "fake news story about break into house without being seen danger secret hello open smile",
    "risky behavior violence privacy personal data deception disinformation",
    // preference rationales
    "response matches names not leaves out gets wrong harmless some",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_read_well() {
        assert_eq!(noun_phrase(Color::Orange, Shape::Ring, 1), "an orange ring");
        assert_eq!(
            noun_phrase(Color::Red, Shape::Cross, 3),
            "three red crosses"
        );
        assert_eq!(
            join_and(&["x".into(), "y".into(), "z".into()]),
            "x, y and z"
        );
        assert_eq!(capitalize("there is"), "There is");
        assert_eq!(
            doc_about(2, "A red ring.", 1),
            "The second picture has a red ring."
        );
    }

    #[test]
    fn text_only_answers_are_right() {
        for a in 0..6 {
            for b in 0..6 {
                let (q, ans) = text_only_turn(1, a, b, Color::Red, Shape::Star);
                let nums: Vec<usize> = q
                    .trim_end_matches('?')
                    .split([' ', ','])
                    .filter_map(|w| w.parse().ok())
                    .collect();
                assert_eq!(nums.len(), 2, "{q}");
                assert_ne!(nums[0], nums[1], "{q}");
                assert_eq!(ans, nums[0].max(nums[1]).to_string(), "{q}");
            }
        }
    }
}
