//! Arithmetic word problems with worked answers, generated from a seed: a data source for
//! experiments that need grade-school math (supervised fine-tuning on solutions, rewards that
//! check a final answer).
//!
//! It exists because no package on the registries this project loads from ships such problems
//! with their answers (PyPI's `aviary-gsm8k` 0.37.0, for one, holds code and no data), so an
//! experiment makes its own: `Arithmetic(seed: 1, count: 2000)` in `data:`.
//!
//! A problem is a short story from a template (a person, a kind of object, one or two
//! operations), for example
//! ```text
//! question: Mia has 23 stickers. She buys 17 more. How many stickers does Mia have now?
//! solution: 23 + 17 = 40\n#### 40
//! answer:   40
//! ```
//! With `steps: 2` a second sentence works on the first result ("Each friend then puts them
//! equally into 3 jars.") and the solution has both equations before `#### N`, as GSM8K writes
//! its final answers.
//!
//! Decisions:
//! - Every number is a whole number and never negative: a subtraction leaves at least 1, a
//!   division is exact and leaves at least 2 in each share, both factors of a multiplication
//!   are at most 12, and so is every divisor. Fresh operands are at least 2 (so "1 stickers"
//!   never appears) and at most `max_operand`; a first result may exceed it, and a second
//!   step works on that result as it is.
//! - The problems are generated as JSON Lines in memory (keys `text`: the question and its
//!   solution, `question`, `prompt`: the question ending in a line break, `solution`, `answer`) and parsed by the ordinary JSONL reader, so records, origins (file
//!   `arithmetic(seed=N)`, 1-based line) and the sha256 come out exactly as for a file.
//! - The bytes are a function of the options alone: SplitMix64 draws (the generator of
//!   [`super::blocks::splitmix64`]), fixed template tables, no floats and no hash-map order.
//!   Changing a template changes every data hash made with it, and with it the run keys.
//! - Problems are distinct by question text. A template renders each choice of (template,
//!   person, object, numbers) as a different text, so the number of distinct problems the
//!   options allow is counted exactly; asking for more is an error that says how many there
//!   are. When the request is at least half of them, the whole space is listed and shuffled
//!   instead of drawn at random, so a request near the limit does not wait on rare draws.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::blocks::splitmix64;
use super::formats::{Format, LoadedSource, SourceError};
use ArithOp::{Add, Divide, Multiply, Subtract};

/// An operation a problem may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ArithOp {
    /// `a + b`, operands in `[2, max_operand]`.
    Add,
    /// `a - b`, with `2 <= b < a <= max_operand`: the result is at least 1.
    Subtract,
    /// `a * b`, both factors in `[2, min(12, max_operand)]`.
    Multiply,
    /// `a / b`, exact: a divisor in `[2, min(12, max_operand)]`, a quotient of at least 2, and
    /// (in a first step) `a <= max_operand`.
    Divide,
}

impl ArithOp {
    /// The operator as the solutions write it.
    pub fn symbol(self) -> char {
        match self {
            ArithOp::Add => '+',
            ArithOp::Subtract => '-',
            ArithOp::Multiply => '*',
            ArithOp::Divide => '/',
        }
    }

    /// `a op b`; `None` where the result would not be a whole number of at least 0.
    pub fn apply(self, a: u64, b: u64) -> Option<u64> {
        match self {
            ArithOp::Add => a.checked_add(b),
            ArithOp::Subtract => a.checked_sub(b),
            ArithOp::Multiply => a.checked_mul(b),
            ArithOp::Divide if b != 0 && a.is_multiple_of(b) => Some(a / b),
            ArithOp::Divide => None,
        }
    }
}

/// The largest factor of a multiplication and the largest divisor.
pub const SMALL_OPERAND: u64 = 12;
/// The largest `max_operand` accepted: word-problem numbers, and a bound on the counting.
pub const MAX_OPERAND_LIMIT: u64 = 10_000;

pub(super) fn default_max_operand() -> u64 {
    50
}

pub(super) fn default_operations() -> Vec<ArithOp> {
    vec![ArithOp::Add, ArithOp::Subtract]
}

pub(super) fn default_steps() -> usize {
    1
}

/// The options of [`super::SourceSpec::Arithmetic`], documented there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    pub count: usize,
    pub max_operand: u64,
    pub operations: Vec<ArithOp>,
    pub steps: usize,
}

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub question: String,
    /// The equations, one a line, then `#### N`.
    pub solution: String,
    pub answer: u64,
}

/// The name a generated source goes by in records and errors, in place of a file name.
pub fn source_name(seed: u64) -> PathBuf {
    PathBuf::from(format!("arithmetic(seed={seed})"))
}

/// The format the generated bytes are read with.
pub fn format() -> Format {
    Format::Jsonl { text_field: "text".into(), fields: Vec::new() }
}

/// Generate the problems and read them as a source.
pub fn load(options: &Options) -> Result<LoadedSource, SourceError> {
    let bytes = jsonl(options)?;
    super::formats::parse(&bytes, &source_name(options.seed), &format())
}

/// Resolving is for files; a generated source has none.
pub fn no_file(seed: u64) -> SourceError {
    SourceError::Spec {
        file: source_name(seed),
        message: "a generated source has no file to resolve (loading it generates the problems)".into(),
    }
}

/// The problems as JSON Lines: one object a line, keys `text` (the worked problem: the question,
/// a line break, the solution: what pretraining reads), `question`, `prompt` (the question and
/// the line break: with the solution as the response, a prompt/response example is the text),
/// `solution` and `answer` (the number as text), each line ending in `\n`.
pub fn jsonl(options: &Options) -> Result<Vec<u8>, SourceError> {
    #[derive(Serialize)]
    struct Line<'a> {
        text: String,
        question: &'a str,
        prompt: String,
        solution: &'a str,
        answer: String,
    }
    let mut bytes = Vec::new();
    for problem in generate(options)? {
        let line = Line {
            text: format!("{}\n{}", problem.question, problem.solution),
            question: &problem.question,
            prompt: format!("{}\n", problem.question),
            solution: &problem.solution,
            answer: problem.answer.to_string(),
        };
        serde_json::to_writer(&mut bytes, &line).expect("strings serialize");
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// `count` distinct problems, in the order the seed gives.
pub fn generate(options: &Options) -> Result<Vec<Problem>, SourceError> {
    let spec_error = |message: String| SourceError::Spec { file: source_name(options.seed), message };
    let limits = check(options).map_err(spec_error)?;
    let space = space(options, limits);
    if options.count as u128 > space {
        return Err(spec_error(format!(
            "asks for {} distinct problems, but these options make only {space} \
             (raise `max_operand`, add `operations` or use `steps: 2`)",
            options.count
        )));
    }
    let mut rng = Rng(options.seed);
    let mut seen = HashSet::new();
    let mut problems = Vec::with_capacity(options.count);
    let mut keep = |problem: Problem, problems: &mut Vec<Problem>| {
        if seen.insert(problem.question.clone()) {
            problems.push(problem);
        }
    };
    if options.count as u128 * 2 >= space {
        // Near the limit: list every problem, shuffle, keep the first `count`.
        let mut all = enumerate(options, limits);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for choice in all.into_iter().take(options.count) {
            keep(render(&choice), &mut problems);
        }
    } else {
        // Far from it (under half the space): draw, skipping repeats.
        let attempts = options.count.saturating_mul(1000).saturating_add(10_000);
        for _ in 0..attempts {
            if problems.len() == options.count {
                break;
            }
            if let Some(choice) = draw(options, limits, &mut rng) {
                keep(render(&choice), &mut problems);
            }
        }
    }
    if problems.len() < options.count {
        // Unreachable while every choice renders as a different text; kept as a clear error.
        return Err(spec_error(format!(
            "made only {} distinct problems of the {} asked for",
            problems.len(),
            options.count
        )));
    }
    Ok(problems)
}

/// The ranges fresh operands are drawn from.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `max_operand`.
    max: u64,
    /// `min(12, max_operand)`: factors and divisors.
    small: u64,
}

fn check(options: &Options) -> Result<Limits, String> {
    if options.count == 0 {
        return Err("`count` must be at least 1".into());
    }
    if !(1..=2).contains(&options.steps) {
        return Err(format!("`steps` must be 1 or 2, not {}", options.steps));
    }
    if options.operations.is_empty() {
        return Err("`operations` is empty: name at least one of Add, Subtract, Multiply, Divide".into());
    }
    if let Some(op) = options.operations.iter().enumerate().find(|(i, op)| options.operations[..*i].contains(op)) {
        return Err(format!("`operations` lists {:?} twice", op.1));
    }
    if !(2..=MAX_OPERAND_LIMIT).contains(&options.max_operand) {
        return Err(format!("`max_operand` must be between 2 and {MAX_OPERAND_LIMIT}, not {}", options.max_operand));
    }
    Ok(Limits { max: options.max_operand, small: options.max_operand.min(SMALL_OPERAND) })
}

/// One problem as the choices that make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Choice {
    /// Index into [`OPENINGS`].
    opening: usize,
    /// Index into [`PEOPLE`].
    person: usize,
    /// Index into the opening's objects.
    object: usize,
    a: u64,
    b: u64,
    /// The second step: index into [`SECOND_STEPS`], and its operand.
    then: Option<(usize, u64)>,
}

/// The first step's operands `(a, b)`, all of them, in a fixed order.
fn first_operands(op: ArithOp, limits: Limits) -> Vec<(u64, u64)> {
    let Limits { max, small } = limits;
    match op {
        ArithOp::Add => (2..=max).flat_map(|a| (2..=max).map(move |b| (a, b))).collect(),
        ArithOp::Subtract => (3..=max).flat_map(|a| (2..a).map(move |b| (a, b))).collect(),
        ArithOp::Multiply => (2..=small).flat_map(|a| (2..=small).map(move |b| (a, b))).collect(),
        ArithOp::Divide => (2..=small).flat_map(|b| (2..=max / b).map(move |q| (b * q, b))).collect(),
    }
}

/// How many first steps give each result: `histogram[r]` pairs `(a, b)` make `r`.
fn first_results(op: ArithOp, limits: Limits) -> Vec<u128> {
    let max = limits.max as usize;
    // A difference array over every possible result (sums reach 2 max, products 12 * 12).
    let mut diff = vec![0i64; 2 * max + (SMALL_OPERAND * SMALL_OPERAND) as usize + 2];
    match op {
        ArithOp::Add => {
            for a in 2..=max {
                diff[a + 2] += 1;
                diff[a + max + 1] -= 1;
            }
        }
        ArithOp::Subtract => {
            for a in 3..=max {
                diff[1] += 1;
                diff[a - 1] -= 1;
            }
        }
        ArithOp::Multiply | ArithOp::Divide => {
            for (a, b) in first_operands(op, limits) {
                let r = op.apply(a, b).expect("valid operands") as usize;
                diff[r] += 1;
                diff[r + 1] -= 1;
            }
        }
    }
    let mut running = 0i64;
    diff.iter()
        .map(|d| {
            running += d;
            running as u128
        })
        .collect()
}

/// The second step's operand range `lo..=hi` after a first result `r` (before the divisor
/// condition, which [`second_ok`] adds for division).
fn second_range(op: ArithOp, r: u64, limits: Limits) -> (u64, u64) {
    match op {
        ArithOp::Add => (2, limits.max),
        ArithOp::Subtract => (2, r.saturating_sub(1)),
        ArithOp::Multiply if (2..=limits.small).contains(&r) => (2, limits.small),
        ArithOp::Multiply => (1, 0),
        ArithOp::Divide => (2, limits.small),
    }
}

fn second_ok(op: ArithOp, r: u64, c: u64) -> bool {
    op != ArithOp::Divide || (r.is_multiple_of(c) && r / c >= 2)
}

/// The second step's valid operands after a first result `r`, in increasing order.
fn second_operands(op: ArithOp, r: u64, limits: Limits) -> impl Iterator<Item = u64> {
    let (lo, hi) = second_range(op, r, limits);
    (lo..=hi).filter(move |&c| second_ok(op, r, c))
}

fn second_count(op: ArithOp, r: u64, limits: Limits) -> u64 {
    match op {
        ArithOp::Divide => second_operands(op, r, limits).count() as u64,
        _ => {
            let (lo, hi) = second_range(op, r, limits);
            if hi >= lo { hi - lo + 1 } else { 0 }
        }
    }
}

fn openings(op: ArithOp) -> impl Iterator<Item = (usize, &'static Opening)> {
    OPENINGS.iter().enumerate().filter(move |(_, o)| o.op == op)
}

fn second_steps(op: ArithOp) -> impl Iterator<Item = (usize, &'static SecondStep)> {
    SECOND_STEPS.iter().enumerate().filter(move |(_, s)| s.op == op)
}

/// How many distinct problems the options allow.
fn space(options: &Options, limits: Limits) -> u128 {
    let people = PEOPLE.len() as u128;
    options
        .operations
        .iter()
        .map(|&op| {
            let stories: u128 = openings(op).map(|(_, o)| o.objects.len() as u128).sum();
            let results = first_results(op, limits);
            let ways: u128 = match options.steps {
                1 => results.iter().sum(),
                _ => results
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| {
                        let seconds: u128 = options
                            .operations
                            .iter()
                            .map(|&op2| second_steps(op2).count() as u128 * second_count(op2, r as u64, limits) as u128)
                            .sum();
                        n * seconds
                    })
                    .sum(),
            };
            people * stories * ways
        })
        .sum()
}

/// Every problem the options allow, in a fixed order.
fn enumerate(options: &Options, limits: Limits) -> Vec<Choice> {
    let mut all = Vec::new();
    for &op in &options.operations {
        let pairs = first_operands(op, limits);
        for (opening, story) in openings(op) {
            for person in 0..PEOPLE.len() {
                for object in 0..story.objects.len() {
                    for &(a, b) in &pairs {
                        let choice = Choice { opening, person, object, a, b, then: None };
                        if options.steps == 1 {
                            all.push(choice);
                            continue;
                        }
                        let r = op.apply(a, b).expect("valid operands");
                        for &op2 in &options.operations {
                            for (second, _) in second_steps(op2) {
                                for c in second_operands(op2, r, limits) {
                                    all.push(Choice { then: Some((second, c)), ..choice });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    all
}

/// One problem drawn at random; `None` when the draw has no valid second step (draw again).
fn draw(options: &Options, limits: Limits, rng: &mut Rng) -> Option<Choice> {
    let Limits { max, small } = limits;
    let op = *rng.pick(&options.operations);
    let (a, b) = match op {
        ArithOp::Add => (rng.range(2, max), rng.range(2, max)),
        ArithOp::Subtract if max < 3 => return None,
        ArithOp::Subtract => {
            let a = rng.range(3, max);
            (a, rng.range(2, a - 1))
        }
        ArithOp::Multiply => (rng.range(2, small), rng.range(2, small)),
        ArithOp::Divide if small.min(max / 2) < 2 => return None,
        ArithOp::Divide => {
            let b = rng.range(2, small.min(max / 2));
            (b * rng.range(2, max / b), b)
        }
    };
    let stories: Vec<_> = openings(op).map(|(i, _)| i).collect();
    let opening = *rng.pick(&stories);
    let person = rng.below(PEOPLE.len() as u64) as usize;
    let object = rng.below(OPENINGS[opening].objects.len() as u64) as usize;
    let mut choice = Choice { opening, person, object, a, b, then: None };
    if options.steps == 2 {
        let r = op.apply(a, b).expect("valid operands");
        let op2 = *rng.pick(&options.operations);
        let seconds: Vec<_> = second_steps(op2).map(|(i, _)| i).collect();
        let second = *rng.pick(&seconds);
        let n = second_count(op2, r, limits);
        if n == 0 {
            return None;
        }
        let c = match op2 {
            ArithOp::Divide => second_operands(op2, r, limits).nth(rng.below(n) as usize).expect("within count"),
            _ => second_range(op2, r, limits).0 + rng.below(n),
        };
        choice.then = Some((second, c));
    }
    Some(choice)
}

/// The problem's text, worked solution and answer.
fn render(choice: &Choice) -> Problem {
    let story = &OPENINGS[choice.opening];
    let person = &PEOPLE[choice.person];
    let object = story.objects[choice.object];
    let fill = |template: &str| {
        template
            .replace("{name}", person.name)
            .replace("{He}", &capitalize(person.he))
            .replace("{he}", person.he)
            .replace("{His}", &capitalize(person.his))
            .replace("{his}", person.his)
            .replace("{him}", person.him)
            .replace("{obj}", object)
            .replace("{a}", &choice.a.to_string())
            .replace("{b}", &choice.b.to_string())
    };
    let first = story.op.apply(choice.a, choice.b).expect("valid operands");
    let mut solution = format!("{} {} {} = {first}\n", choice.a, story.op.symbol(), choice.b);
    let (question, answer) = match choice.then {
        None => (format!("{} {}", fill(story.text), fill(story.question)), first),
        Some((second, c)) => {
            let step = &SECOND_STEPS[second];
            let holder = fill(story.holder);
            let fill_second = |template: &str| {
                template
                    .replace("{Holder}", &capitalize(&holder))
                    .replace("{holder's}", &format!("{holder}'s"))
                    .replace("{holder}", &holder)
                    .replace("{obj}", object)
                    .replace("{c}", &c.to_string())
            };
            let answer = step.op.apply(first, c).expect("valid second operand");
            solution.push_str(&format!("{first} {} {c} = {answer}\n", step.op.symbol()));
            (format!("{} {} {}", fill(story.text), fill_second(step.text), fill_second(step.question)), answer)
        }
    };
    solution.push_str(&format!("#### {answer}"));
    Problem { question, solution, answer }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// SplitMix64 draws, multiply-shift into a range (no modulo bias worth naming, no floats).
struct Rng(u64);

impl Rng {
    /// A draw in `[0, n)`; `n` must be at least 1.
    fn below(&mut self, n: u64) -> u64 {
        ((splitmix64(&mut self.0) as u128 * n as u128) >> 64) as u64
    }

    /// A draw in `[lo, hi]`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Person {
    name: &'static str,
    he: &'static str,
    his: &'static str,
    him: &'static str,
}

const fn she(name: &'static str) -> Person {
    Person { name, he: "she", his: "her", him: "her" }
}

const fn he(name: &'static str) -> Person {
    Person { name, he: "he", his: "his", him: "him" }
}

const PEOPLE: [Person; 16] = [
    she("Mia"),
    he("Liam"),
    she("Ava"),
    he("Noah"),
    she("Zara"),
    he("Omar"),
    she("Priya"),
    he("Mateo"),
    she("Hana"),
    he("Kofi"),
    she("Lucia"),
    he("Ethan"),
    she("Amara"),
    he("Diego"),
    she("Sofia"),
    he("Yusuf"),
];

/// A one-step story: its first operation on `{a}` and `{b}`, the question asked when it is the
/// whole problem, and who holds the result when a second step follows.
struct Opening {
    op: ArithOp,
    text: &'static str,
    question: &'static str,
    /// The subject of a second step: the person (`{name}`) or each share's receiver.
    holder: &'static str,
    /// Plural nouns that fit the story; none is a container or unit a second step names.
    objects: &'static [&'static str],
}

/// A second step on the first result, with the question it ends the problem with. `{holder}`
/// is the opening's holder; `{c}` the operand.
struct SecondStep {
    op: ArithOp,
    text: &'static str,
    question: &'static str,
}

const fn opening(
    op: ArithOp,
    text: &'static str,
    question: &'static str,
    holder: &'static str,
    objects: &'static [&'static str],
) -> Opening {
    Opening { op, text, question, holder, objects }
}

const fn second(op: ArithOp, text: &'static str, question: &'static str) -> SecondStep {
    SecondStep { op, text, question }
}

const OPENINGS: &[Opening] = &[
    // Addition.
    opening(
        Add,
        "{name} has {a} {obj}. {He} buys {b} more.",
        "How many {obj} does {name} have now?",
        "{name}",
        &["stickers", "marbles", "pencils", "stamps", "comic books"],
    ),
    opening(
        Add,
        "{name} picks {a} {obj} in the morning and {b} more in the afternoon.",
        "How many {obj} does {name} pick in all?",
        "{name}",
        &["apples", "strawberries", "flowers", "tomatoes", "lemons"],
    ),
    opening(
        Add,
        "{name} collects {a} {obj} at the beach. {His} friend gives {him} {b} more.",
        "How many {obj} does {name} have now?",
        "{name}",
        &["seashells", "pebbles", "smooth stones", "pieces of sea glass"],
    ),
    opening(
        Add,
        "There are {a} {obj} in {name}'s basket. {He} adds {b} more.",
        "How many {obj} are in the basket now?",
        "{name}",
        &["eggs", "oranges", "potatoes", "onions", "peaches"],
    ),
    opening(
        Add,
        "{name} bakes {a} {obj} on Saturday and {b} on Sunday.",
        "How many {obj} does {name} bake over the weekend?",
        "{name}",
        &["cookies", "muffins", "cupcakes", "rolls", "pies"],
    ),
    opening(
        Add,
        "{name} has {a} {obj} in a jar. {He} wins {b} more at the fair.",
        "How many {obj} does {name} have now?",
        "{name}",
        &["marbles", "tokens", "buttons", "beads"],
    ),
    opening(
        Add,
        "{name} saves {a} {obj} in January and {b} in February.",
        "How many {obj} has {name} saved altogether?",
        "{name}",
        &["coins", "stamps", "postcards", "badges"],
    ),
    opening(
        Add,
        "{name} plants {a} {obj} in the garden. The next day {he} plants {b} more.",
        "How many {obj} has {name} planted?",
        "{name}",
        &["tulips", "seedlings", "sunflowers", "bean plants", "rose bushes"],
    ),
    opening(
        Add,
        "{name} has {a} {obj} on one shelf and {b} on another.",
        "How many {obj} does {name} have on the two shelves?",
        "{name}",
        &["books", "toy cars", "puzzles", "board games", "plates"],
    ),
    // Subtraction.
    opening(
        Subtract,
        "{name} has {a} {obj}. {He} gives {b} of them to {his} brother.",
        "How many {obj} does {name} have left?",
        "{name}",
        &["stickers", "marbles", "crayons", "trading cards", "toy cars"],
    ),
    opening(
        Subtract,
        "{name} bakes {a} {obj} and sells {b} of them.",
        "How many {obj} does {name} have left?",
        "{name}",
        &["cookies", "muffins", "cupcakes", "loaves of bread"],
    ),
    opening(
        Subtract,
        "{name} picks {a} {obj} in the orchard. {He} eats {b} on the way home.",
        "How many {obj} does {name} have when {he} gets home?",
        "{name}",
        &["apples", "plums", "pears", "cherries", "apricots"],
    ),
    opening(
        Subtract,
        "There are {a} {obj} in {name}'s box. {He} loses {b} of them.",
        "How many {obj} are left in the box?",
        "{name}",
        &["crayons", "marbles", "puzzle pieces", "buttons"],
    ),
    opening(
        Subtract,
        "{name} has {a} {obj}. {He} uses {b} of them for an art project.",
        "How many {obj} does {name} have left?",
        "{name}",
        &["stickers", "sheets of paper", "beads", "ribbons", "paper cups"],
    ),
    opening(
        Subtract,
        "{name} has {a} {obj} in {his} collection. {He} trades away {b} of them.",
        "How many {obj} are still in {name}'s collection?",
        "{name}",
        &["trading cards", "stamps", "coins", "comic books"],
    ),
    opening(
        Subtract,
        "A shelf in {name}'s shop holds {a} {obj}. {He} sells {b} of them in the morning.",
        "How many {obj} are left on the shelf?",
        "{name}",
        &["candles", "notebooks", "mugs", "toy robots"],
    ),
    opening(
        Subtract,
        "{name} has {a} {obj} to hand out. {He} gives out {b} of them at school.",
        "How many {obj} does {name} still have?",
        "{name}",
        &["flyers", "invitations", "pencils", "bookmarks"],
    ),
    opening(
        Subtract,
        "{name} plants {a} {obj}, but rabbits eat {b} of them.",
        "How many {obj} does {name} have left?",
        "{name}",
        &["lettuces", "carrots", "cabbages", "seedlings"],
    ),
    // Multiplication.
    opening(
        Multiply,
        "{name} has {a} boxes. Each box holds {b} {obj}.",
        "How many {obj} does {name} have in all?",
        "{name}",
        &["crayons", "chocolates", "markers", "candles"],
    ),
    opening(
        Multiply,
        "{name} buys {a} packs of {obj}. Each pack has {b} {obj}.",
        "How many {obj} does {name} buy?",
        "{name}",
        &["stickers", "batteries", "pencils", "trading cards"],
    ),
    opening(
        Multiply,
        "{name} plants {a} rows of {obj} with {b} {obj} in each row.",
        "How many {obj} does {name} plant?",
        "{name}",
        &["carrots", "tulips", "lettuces", "pepper plants"],
    ),
    opening(
        Multiply,
        "{name} bakes {a} trays of {obj}. There are {b} {obj} on each tray.",
        "How many {obj} does {name} bake?",
        "{name}",
        &["cookies", "muffins", "rolls", "scones"],
    ),
    opening(
        Multiply,
        "{name} fills {a} baskets with {b} {obj} each.",
        "How many {obj} does {name} put in the baskets?",
        "{name}",
        &["apples", "oranges", "potatoes", "peaches"],
    ),
    opening(
        Multiply,
        "For {a} days, {name} collects {b} {obj} every day.",
        "How many {obj} does {name} collect?",
        "{name}",
        &["seashells", "eggs", "leaves", "pine cones"],
    ),
    opening(
        Multiply,
        "{name} has {a} tins, and each tin holds {b} {obj}.",
        "How many {obj} are in the tins altogether?",
        "{name}",
        &["buttons", "beads", "coins", "candies"],
    ),
    opening(
        Multiply,
        "{name} sets up {a} tables for a party and puts {b} {obj} on each table.",
        "How many {obj} does {name} put out?",
        "{name}",
        &["cups", "plates", "balloons", "napkins"],
    ),
    opening(
        Multiply,
        "There are {a} shelves in {name}'s room with {b} {obj} on each shelf.",
        "How many {obj} are on the shelves?",
        "{name}",
        &["books", "toy cars", "potted plants", "trophies"],
    ),
    // Division.
    opening(
        Divide,
        "{name} has {a} {obj} and shares them equally among {b} friends.",
        "How many {obj} does each friend get?",
        "each friend",
        &["candies", "stickers", "marbles", "grapes"],
    ),
    opening(
        Divide,
        "{name} divides {a} {obj} equally among {his} {b} cousins.",
        "How many {obj} does each cousin get?",
        "each cousin",
        &["cookies", "comic books", "toy cars", "crayons"],
    ),
    opening(
        Divide,
        "{name} is a teacher with {a} {obj} to hand out equally to {b} students.",
        "How many {obj} does each student get?",
        "each student",
        &["pencils", "notebooks", "erasers", "worksheets"],
    ),
    opening(
        Divide,
        "{name} splits {a} {obj} equally among {b} teammates.",
        "How many {obj} does each teammate get?",
        "each teammate",
        &["oranges", "granola bars", "water bottles", "bananas"],
    ),
    opening(
        Divide,
        "{name} gives {a} {obj} to {b} children, the same number to each child.",
        "How many {obj} does each child get?",
        "each child",
        &["balloons", "stickers", "party hats", "bookmarks"],
    ),
    opening(
        Divide,
        "{name} picks {a} {obj} and gives them out equally to {b} neighbours.",
        "How many {obj} does each neighbour get?",
        "each neighbour",
        &["apples", "plums", "tomatoes", "zucchinis"],
    ),
    opening(
        Divide,
        "{name} has {a} {obj} to share equally among {b} classmates.",
        "How many {obj} does each classmate get?",
        "each classmate",
        &["cupcakes", "stickers", "candies", "trading cards"],
    ),
    opening(
        Divide,
        "{name} bakes {a} {obj} and hands them out equally to {b} guests.",
        "How many {obj} does each guest get?",
        "each guest",
        &["cookies", "muffins", "brownies", "pretzels"],
    ),
];

const SECOND_STEPS: &[SecondStep] = &[
    second(Add, "{Holder} then gets {c} more {obj}.", "How many {obj} does {holder} have now?"),
    second(Add, "Later, {holder} finds {c} more {obj}.", "How many {obj} does {holder} have now?"),
    second(Add, "The next day, {holder} is given {c} more {obj}.", "How many {obj} does {holder} have in the end?"),
    second(Add, "{Holder} then buys another {c} {obj}.", "How many {obj} does {holder} have altogether?"),
    second(Add, "After that, {holder} wins {c} more {obj} in a game.", "How many {obj} does {holder} have now?"),
    second(Subtract, "{Holder} then gives away {c} of them.", "How many {obj} does {holder} have left?"),
    second(Subtract, "Later, {holder} loses {c} of them.", "How many {obj} does {holder} have left?"),
    second(Subtract, "{Holder} then uses {c} of them.", "How many {obj} does {holder} have now?"),
    second(Subtract, "After that, {holder} trades {c} of them for a book.", "How many {obj} does {holder} have now?"),
    second(
        Subtract,
        "The next day, {holder} gives {c} of them to a neighbour.",
        "How many {obj} does {holder} have left?",
    ),
    second(Multiply, "Each of the {obj} is worth {c} points.", "How many points are {holder's} {obj} worth in total?"),
    second(Multiply, "Each of the {obj} costs {c} dollars.", "How many dollars do {holder's} {obj} cost altogether?"),
    second(Multiply, "Each of the {obj} weighs {c} grams.", "How many grams do {holder's} {obj} weigh together?"),
    second(
        Multiply,
        "At the fair, each of the {obj} can be swapped for {c} raffle tickets.",
        "How many raffle tickets can {holder} get for all of them?",
    ),
    second(Divide, "{Holder} then puts them equally into {c} jars.", "How many {obj} are in each jar?"),
    second(Divide, "{Holder} then packs them equally into {c} bags.", "How many {obj} go in each bag?"),
    second(Divide, "{Holder} then sorts them into {c} equal piles.", "How many {obj} are in each pile?"),
    second(Divide, "{Holder} then lays them out in {c} equal rows.", "How many {obj} are in each row?"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64, count: usize, max_operand: u64, operations: &[ArithOp], steps: usize) -> Options {
        Options { seed, count, max_operand, operations: operations.to_vec(), steps }
    }

    const ALL: [ArithOp; 4] = [Add, Subtract, Multiply, Divide];

    /// The solution's equations `(a, op, b, c)`, and its final answer.
    fn equations(solution: &str) -> (Vec<(u64, ArithOp, u64, u64)>, u64) {
        let mut lines: Vec<&str> = solution.lines().collect();
        let last = lines.pop().expect("a last line");
        let answer = last.strip_prefix("#### ").unwrap_or_else(|| panic!("no final answer: {solution:?}"));
        let equations = lines
            .iter()
            .map(|line| {
                let words: Vec<&str> = line.split(' ').collect();
                let [a, op, b, "=", c] = words[..] else { panic!("not `a op b = c`: {line:?}") };
                let op = match op {
                    "+" => Add,
                    "-" => Subtract,
                    "*" => Multiply,
                    "/" => Divide,
                    other => panic!("unknown operator {other:?}"),
                };
                (a.parse().expect("a"), op, b.parse().expect("b"), c.parse().expect("c"))
            })
            .collect();
        (equations, answer.parse().expect("a whole number"))
    }

    /// Checks every problem's arithmetic; returns the equations of all of them.
    fn checked(problems: &[Problem], steps: usize) -> Vec<Vec<(u64, ArithOp, u64, u64)>> {
        problems
            .iter()
            .map(|p| {
                let (eqs, answer) = equations(&p.solution);
                assert_eq!(eqs.len(), steps, "{p:?}");
                for (i, &(a, op, b, c)) in eqs.iter().enumerate() {
                    let exact = match op {
                        Add => a + b,
                        Subtract => a.checked_sub(b).expect("never negative"),
                        Multiply => a * b,
                        Divide => {
                            assert!(a.is_multiple_of(b), "inexact division in {p:?}");
                            a / b
                        }
                    };
                    assert_eq!(c, exact, "{p:?}");
                    if i > 0 {
                        assert_eq!(a, eqs[i - 1].3, "a second step works on the first result: {p:?}");
                    }
                    // The fresh operands are in the question.
                    for n in if i == 0 { vec![a, b] } else { vec![b] } {
                        assert!(p.question.contains(&format!(" {n} ")), "{n} not in {:?}", p.question);
                    }
                }
                assert_eq!(answer, eqs.last().expect("an equation").3, "{p:?}");
                assert_eq!(answer, p.answer, "{p:?}");
                assert!(!p.question.contains('{'), "unfilled placeholder: {:?}", p.question);
                eqs
            })
            .collect()
    }

    #[test]
    fn every_answer_is_its_solutions_arithmetic() {
        for seed in 0..4 {
            for steps in [1, 2] {
                for ops in [&ALL[..], &[Add], &[Subtract], &[Multiply], &[Divide], &[Subtract, Divide]] {
                    let problems = generate(&options(seed, 300, 50, ops, steps)).expect("generates");
                    let eqs = checked(&problems, steps);
                    for (p, eqs) in problems.iter().zip(&eqs) {
                        assert!(ops.contains(&eqs[0].1), "{p:?}");
                        assert!(eqs.iter().all(|e| ops.contains(&e.1)), "{p:?}");
                    }
                }
            }
        }
        // Both operations of a chain appear across the draws.
        let problems = generate(&options(9, 2000, 50, &ALL, 2)).expect("generates");
        let pairs: HashSet<(ArithOp, ArithOp)> = checked(&problems, 2).iter().map(|eqs| (eqs[0].1, eqs[1].1)).collect();
        assert_eq!(pairs.len(), 16, "{pairs:?}");
    }

    #[test]
    fn multiplication_stays_small_and_division_exact() {
        for steps in [1, 2] {
            for max_operand in [5, 50, 1000] {
                let problems = generate(&options(4, 400, max_operand, &[Multiply, Divide], steps)).expect("generates");
                for (p, eqs) in problems.iter().zip(checked(&problems, steps)) {
                    for (i, &(a, op, b, c)) in eqs.iter().enumerate() {
                        match op {
                            Multiply => assert!(a <= 12 && b <= 12 && a >= 2 && b >= 2, "{p:?}"),
                            Divide => {
                                assert!((2..=12).contains(&b) && a.is_multiple_of(b) && c >= 2, "{p:?}");
                                if i == 0 {
                                    assert!(a <= max_operand, "{p:?}");
                                }
                            }
                            _ => unreachable!(),
                        }
                        assert!(b <= max_operand, "{p:?}");
                    }
                }
            }
        }
        for p in generate(&options(5, 500, 30, &[Add, Subtract], 1)).expect("generates") {
            let (eqs, _) = equations(&p.solution);
            let (a, _, b, c) = eqs[0];
            assert!((2..=30).contains(&a) && (2..=30).contains(&b) && c >= 1, "{p:?}");
        }
    }

    #[test]
    fn problems_are_distinct_and_as_many_as_asked() {
        for count in [1, 7, 1000] {
            let problems = generate(&options(6, count, 50, &ALL, 2)).expect("generates");
            assert_eq!(problems.len(), count);
            let distinct: HashSet<&str> = problems.iter().map(|p| p.question.as_str()).collect();
            assert_eq!(distinct.len(), count);
        }
    }

    #[test]
    fn the_space_is_counted_exactly_and_asking_beyond_it_says_how_many() {
        let people = PEOPLE.len() as u128;
        let objects = |op| openings(op).map(|(_, o)| o.objects.len() as u128).sum::<u128>();
        // Multiplication with factors 2..=3: 4 pairs per story.
        let small = options(1, 1, 3, &[Multiply], 1);
        let limits = check(&small).expect("valid");
        let space = space(&small, limits);
        assert_eq!(space, people * objects(Multiply) * 4);
        // Listing the space gives exactly that many choices, each a different text.
        for (opts, steps) in [(small.clone(), 1), (options(1, 1, 6, &[Subtract, Divide], 2), 2)] {
            let opts = Options { steps, ..opts };
            let limits = check(&opts).expect("valid");
            let all = enumerate(&opts, limits);
            assert_eq!(all.len() as u128, super::space(&opts, limits));
            let texts: HashSet<String> = all.iter().map(|c| render(c).question).collect();
            assert_eq!(texts.len(), all.len());
            checked(&all.iter().map(render).collect::<Vec<_>>(), steps);
        }
        // Exactly the space: every problem once, in a seeded order.
        let every = generate(&Options { count: space as usize, ..small.clone() }).expect("fits");
        assert_eq!(every.len() as u128, space);
        let err = generate(&Options { count: space as usize + 1, ..small.clone() }).expect_err("too many").to_string();
        assert!(err.contains(&format!("only {space}")) && err.contains("arithmetic(seed=1)"), "{err}");
        // Nothing to make at all.
        let err = generate(&options(1, 1, 3, &[Divide], 1)).expect_err("no division fits").to_string();
        assert!(err.contains("only 0"), "{err}");
        // Larger spaces counted by formula agree with listing them.
        for (max, ops, steps) in [(9, &ALL[..], 1), (9, &ALL[..], 2), (14, &[Add, Multiply][..], 2)] {
            let opts = options(1, 1, max, ops, steps);
            let limits = check(&opts).expect("valid");
            assert_eq!(enumerate(&opts, limits).len() as u128, super::space(&opts, limits));
        }
    }
}
