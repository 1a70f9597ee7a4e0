#!/usr/bin/env python3
"""Builds the tiny Phi-3-shaped tokenizer used by tests, the demo and the `tiny` model preset.

Output: data/assets/tiny-tokenizer/{tokenizer.json,tokenizer_config.json} (committed; CI never runs
this script). Run with the Python `tokenizers` package (0.20 or newer):

    python data/assets/make_tiny_tokenizer.py

Shape (mirrors what a Llama/Phi-3 SentencePiece model looks like once converted to tokenizer.json
with `legacy=False`):

* BPE with byte fallback; ids 0, 1, 2 are `<unk>`, `<s>`, `</s>`; ids 3..258 are the 256 byte tokens
  `<0x00>`..`<0xFF>`; then the learned pieces (alphabet first, then merges in training order).
* No normalizer; a `Metaspace` pre-tokenizer (`▁` replaces spaces, prepended only to the very start
  of the input, no splitting) and the matching `Replace/ByteFallback/Fuse/Strip` decoder.
* A `TemplateProcessing` post-processor that prepends `<s>` (Phi-3-mini's original
  `add_bos_token: true`, which the LAVIS SFT masking relies on).
* The Phi-3 chat tokens appended in Phi-3's order (`<|endoftext|>`, `<|assistant|>`,
  `<|placeholder1..4|>`, `<|system|>`, `<|end|>`, `<|placeholder5..6|>`, `<|user|>`), all special.
  Like Phi-3's `tokenizer_config.json`, every one except `<|endoftext|>` strips the whitespace on
  its right (`rstrip`), which is what the slow tokenizer used by the reference did with the newline
  after `<|user|>`, `<|assistant|>`, `<|system|>` and `<|end|>`.

The merges are trained on a small built-in English corpus covering the synthetic corpus vocabulary
(colours, shapes, positions, numbers, letters, question and answer phrases, the system sentence,
the refusal sentence) plus a list of about 1000 common English words. Deterministic: the
corpus comes from a fixed-seed generator and BPE training breaks ties deterministically.
"""

import json
import os
import random

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "tiny-tokenizer")
VOCAB_SIZE = 1700  # learned part (incl. the 3 specials); byte tokens and chat tokens come on top

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink",
          "brown", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond"]
POSITIONS = ["left", "right", "top", "bottom", "center", "upper", "lower", "middle"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
RELATIONS = ["left of", "right of", "above", "below", "next to", "near"]
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]

# A general list of common English words, so that ordinary prose does not fall back to bytes.
COMMON_WORDS = """
the of and to in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make thing see
him two has look more day could go come did number sound no most people my over know water than call
first who may down side been now find any new work part take get place made live where after back little
only round man year came show every good me give our under name very through just form sentence great
think say help low line differ turn cause much mean before move right boy old too same tell does set three
want air well also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard
start might story saw far sea draw left late run don't while press close night real life few north open
seem together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure door product
black short numeral class wind question happen complete ship area half rock order fire south problem piece
told knew pass since top whole king space heard best hour better true during hundred five remember step
early hold west ground interest reach fast verb sing listen six table travel less morning ten simple
several vowel toward war lay against pattern slow center love person money serve appear road map rain rule
govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green oh quick develop ocean warm free minute strong special mind behind clear tail produce fact
street inch multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among grand ball yet
wave drop heart present heavy dance engine position arm wide sail material size vary settle speak weight
general ice matter circle pair include divide syllable felt perhaps pick sudden count square reason length
represent art subject region energy hunt probable bed brother egg ride cell believe fraction forest sit
race window store summer train sleep prove lone exercise wall catch mount wish sky board joy winter sat
written wild instrument kept glass grass cow job edge sign visit past soft fun bright gas weather month
million bear finish happy hope flower clothe strange gone jump baby eight village meet root buy raise
solve metal whether push seven paragraph third shall held hair describe cook floor either result burn hill
safe cat century consider type law bit coast copy phrase silent tall sand soil roll temperature finger
industry value fight lie beat excite natural view sense ear else quite broke case middle kill son lake
moment scale loud spring observe child straight consonant nation dictionary milk speed method organ pay
age section dress cloud surprise quiet stone tiny climb cool design poor lot experiment bottom key iron
single stick flat twenty skin smile crease hole trade melody trip office receive row mouth exact symbol
die least trouble shout except wrote seed tone join suggest clean break lady yard rise bad blow oil blood
touch grew cent mix team wire cost lost brown wear garden equal sent choose fell fit flow fair bank collect
save control decimal gentle woman captain practice separate difficult doctor please protect noon whose
locate ring character insect caught period indicate radio spoke atom human history effect electric expect
crop modern element hit student corner party supply bone rail imagine provide agree thus capital chair
danger fruit rich thick soldier process operate guess necessary sharp wing create neighbor wash bat rather
crowd corn compare poem string bell depend meat rub tube famous dollar stream fear sight thin triangle
planet hurry chief colony clock mine tie enter major fresh search send yellow gun allow print dead spot
desert suit current lift rose continue block chart hat sell success company subtract event particular deal
swim term opposite wife shoe shoulder spread arrange camp invent cotton born determine quart nine truck
noise level chance gather shop stretch throw shine property column molecule select wrong gray repeat
require broad prepare salt nose plural anger claim continent oxygen sugar death pretty skill women season
solution magnet silver thank branch match suffix especially fig afraid huge sister steel discuss forward
similar guide experience score apple bought led pitch coat mass card band rope slip win dream evening
condition feed tool total basic smell valley nor double seat arrive master track parent shore division
sheet substance favor connect post spend chord fat glad original share station dad bread charge proper bar
offer segment slave duck instant market degree populate chick dear enemy reply drink occur support speech
nature range steam motion path liquid log meant quotient teeth shell neck
""".split()

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")
REFUSAL = "I'm sorry, I cannot help with that."

FIXED = [
    SYSTEM,
    REFUSAL,
    "I'm sorry, I can't help with that request.",
    "Describe the image.", "Describe the picture in detail.", "Write a short caption for the image.",
    "What is shown in the image?", "What does the picture show?", "Caption: a simple drawing.",
    "Answer the question using a single word or phrase.", "Answer yes or no.",
    "Look at this image and this image. What is different?",
    "The first image shows a shape and the second image shows another shape.",
    "This is a photo of a few simple shapes on a plain background.",
    "The image contains several objects of different colors and sizes.",
    "There is nothing else in the image.", "The background is plain.",
    "Yes, there is.", "No, there is not.", "Yes.", "No.", "yes", "no",
    "The answer is yes.", "The answer is no.",
    "Count the shapes in the picture.", "How many objects are there in total?",
    "Which shape is the largest?", "Which shape is the smallest?", "Where is the star?",
    "Read the text in the image.", "The text says hello world.", "What letter is written?",
    "What number is written?", "The quick brown fox jumps over the lazy dog.",
    "Please provide a detailed description of the image.",
    "Thank you for the question. Here is my answer.",
    "The user asked a question about the picture and the assistant answered it.",
    "Hello! How can I help you today?", "Sure, here is a description of the image.",
]


def corpus_lines():
    rng = random.Random(20240806)
    lines = list(FIXED) * 20
    lines += [" ".join(COLORS), " ".join(SHAPES), " ".join(POSITIONS), " ".join(NUMBERS),
              " ".join(LETTERS), " ".join(str(d) for d in range(10)), "0 1 2 3 4 5 6 7 8 9 10 11 12"]
    for color in COLORS:
        for shape in SHAPES:
            lines.append(f"There is a {color} {shape} in the image.")
            lines.append(f"a {color} {shape}")
            lines.append(f"Is there a {color} {shape}?")
            lines.append(f"What color is the {shape}? The {shape} is {color}.")
    for shape in SHAPES:
        for n, word in enumerate(NUMBERS, start=1):
            plural = shape + "s" if shape != "cross" else "crosses"
            lines.append(f"How many {plural} are there? There are {word} {plural}.")
            lines.append(f"How many {plural} are in the picture? {n}")
        for pos in POSITIONS:
            lines.append(f"Where is the {shape}? The {shape} is at the {pos}.")
            lines.append(f"The {shape} is in the {pos} part of the picture.")
    for letter in LETTERS:
        lines.append(f"What letter is shown? The letter {letter}.")
        lines.append(f"The image shows the letter {letter} in {rng.choice(COLORS)}.")
    for n in range(0, 101):
        lines.append(f"The number {n} is written in the image.")
    for word in COMMON_WORDS:
        lines.append(f"{word} {word.capitalize()} the {word} is a {word}.")
    for _ in range(800):
        lines.append(" ".join(rng.choice(COMMON_WORDS) for _ in range(12)).capitalize() + ".")
    for _ in range(1500):
        c1, c2 = rng.choice(COLORS), rng.choice(COLORS)
        s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
        rel, pos = rng.choice(RELATIONS), rng.choice(POSITIONS)
        num = rng.choice(NUMBERS)
        kind = rng.randrange(8)
        if kind == 0:
            lines.append(f"The {c1} {s1} is {rel} the {c2} {s2}.")
        elif kind == 1:
            lines.append(f"The picture shows a {c1} {s1} and a {c2} {s2} in the {pos}.")
        elif kind == 2:
            lines.append(f"Is the {c1} {s1} {rel} the {c2} {s2}? {rng.choice(['Yes', 'No'])}.")
        elif kind == 3:
            lines.append(f"Caption: {num} {c1} shapes on a {c2} background.")
        elif kind == 4:
            lines.append(f"This image shows {num} shapes. The {s1} in the {pos} is {c1}.")
        elif kind == 5:
            lines.append(f"What is {rel} the {s1}? A {c2} {s2}.")
        elif kind == 6:
            lines.append(f"In the {pos} {rng.choice(POSITIONS)} corner there is a {c1} {s1}.")
        else:
            lines.append(f"Describe the image. The image shows a {c1} {s1} above a {c2} {s2}.")
    return lines


def main():
    lines = corpus_lines()

    # Training: split on the metaspace, punctuation and single digits so that merges never cross
    # word boundaries and never glue punctuation or digits (like Llama's SentencePiece pieces). Only
    # the first word of a line gets no `▁`, as happens to text that follows a special token.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    alphabet = [chr(c) for c in range(32, 127)] + ["▁"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, max_token_length=16)
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]

    # Final vocabulary in the Llama layout: specials, 256 byte tokens, then the learned pieces.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in ["<unk>", "<s>", "</s>"]])

    # Phi-3 chat tokens, in Phi-3's id order (32000..32010 there).
    chat = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
            "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
            "<|placeholder6|>", "<|user|>"]
    for t in chat:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True,
                                           rstrip=(t != "<|endoftext|>"))])

    os.makedirs(OUT_DIR, exist_ok=True)
    tok.save(os.path.join(OUT_DIR, "tokenizer.json"), pretty=False)

    added_decoder = {}
    for t in ["<unk>", "<s>", "</s>"] + chat:
        added_decoder[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False,
            "rstrip": t not in ("<unk>", "<s>", "</s>", "<|endoftext|>"),
            "single_word": False, "special": True,
        }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_decoder,
        "bos_token": "<s>",
        "chat_template": (
            "{{ bos_token }}{% for message in messages %}"
            "{% if message['role'] == 'system' %}"
            "{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
            "{% elif message['role'] == 'user' %}"
            "{{ '<|user|>\n' + message['content'] + '<|end|>\n' + '<|assistant|>\n' }}"
            "{% elif message['role'] == 'assistant' %}"
            "{{ message['content'] + '<|end|>\n' }}"
            "{% endif %}{% endfor %}"),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")

    print(f"vocab {tok.get_vocab_size(with_added_tokens=True)} "
          f"(learned {len(vocab)}, merges {len(merges)}) -> {OUT_DIR}")


if __name__ == "__main__":
    main()
