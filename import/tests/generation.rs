//! Tokenizers against llama.cpp's own test vectors, chat templates, sampling and generation
//! through a session against the golden greedy tokens.

#[path = "../../backend/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use bitnet_import::{load_hf_model, load_tokenizer};
use bitnet_model::{
    ChatMessage, ChatTemplate, Conversation, GenerateOptions, ModelError, PreTokenizer, Sampler,
    SamplerConfig, Session, SpecialTokens, StopReason, TokenType, Tokenizer, TokenizerVocab,
    TurnText, VocabModel, chat::BITNET_TEMPLATE, chat::LLAMA3_TEMPLATE,
};
use burn::tensor::Device;
use common::golden_dir;

fn shared(sub: &str) -> Option<PathBuf> {
    let dir = golden_dir()?.join("..").join(sub);
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {} not found", dir.display());
        None
    }
}

/// llama.cpp's test-tokenizer-0 format: inputs split by the marker, one leading and one
/// trailing newline removed from each; one line of space-separated ids per input.
fn vectors(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let inputs = std::fs::read_to_string(dir.join("vectors.inp")).unwrap();
    let outputs = std::fs::read_to_string(dir.join("vectors.out")).unwrap();
    let inputs: Vec<String> = inputs
        .split("__ggml_vocab_test__")
        .map(|s| {
            let s = s.strip_prefix('\n').unwrap_or(s);
            s.strip_suffix('\n').unwrap_or(s).to_string()
        })
        .collect();
    let outputs: Vec<Vec<u32>> = outputs
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert!(outputs.len() + 1 >= inputs.len() && outputs.len() <= inputs.len());
    inputs.into_iter().zip(outputs).collect()
}

fn check_vectors(name: &str, tokenizer: &Tokenizer, cases: &[(String, Vec<u32>)]) {
    assert!(cases.len() > 30, "{name}: only {} vectors", cases.len());
    for (text, want) in cases {
        let got = tokenizer.encode(text, false).unwrap();
        assert_eq!(&got, want, "{name}: {text:?}");
        // Streaming never splits a character and adds up to the whole decode.
        let mut stream = tokenizer.stream();
        let streamed: String = got
            .iter()
            .filter_map(|&id| stream.push(id).unwrap())
            .collect();
        assert_eq!(
            streamed,
            tokenizer.decode(&got).unwrap(),
            "{name}: {text:?}"
        );
    }
}

#[test]
fn llama2_sentencepiece_from_gguf_matches_llama_cpp_vectors() {
    let Some(dir) = shared("tokenizers/llama2-spm") else {
        return;
    };
    let tokenizer = load_tokenizer(&dir.join("vocab.gguf")).unwrap();
    assert_eq!(tokenizer.special().bos, Some(1));
    assert_eq!(tokenizer.encode("Hello", true).unwrap(), [1, 15043]);
    check_vectors("llama2-spm", &tokenizer, &vectors(&dir));
    assert_eq!(tokenizer.decode(&[15043, 3186]).unwrap(), "Hello world");
}

#[test]
fn llama3_bpe_matches_llama_cpp_vectors_from_json_and_from_gguf_lists() {
    let Some(dir) = shared("tokenizers/llama3") else {
        return;
    };
    let cases = vectors(&dir);
    let from_json = load_tokenizer(&dir.join("tokenizer.json")).unwrap();
    check_vectors("llama3 tokenizer.json", &from_json, &cases);
    assert_eq!(from_json.special().bos, Some(128000));

    // The same vocabulary as GGUF stores it: token list, "a b" merges, token types.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let mut tokens = vec![String::new(); from_json.vocab_size()];
    let mut types = vec![TokenType::Normal; tokens.len()];
    for (text, id) in json["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = text.clone();
    }
    for added in json["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        tokens[id] = added["content"].as_str().unwrap().into();
        types[id] = TokenType::Control;
    }
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => {
                let (l, r) = s.split_once(' ').unwrap();
                (l.to_string(), r.to_string())
            }
            pair => (
                pair[0].as_str().unwrap().into(),
                pair[1].as_str().unwrap().into(),
            ),
        })
        .collect();
    let vocab = TokenizerVocab {
        tokens,
        types,
        model: VocabModel::BytePairs {
            merges,
            pre_tokenizer: PreTokenizer::from_gguf_name("llama-bpe").unwrap(),
        },
        unknown: None,
    };
    let from_lists = Tokenizer::from_vocab(vocab, SpecialTokens::default()).unwrap();
    check_vectors("llama3 GGUF lists", &from_lists, &cases);
    // End-of-turn tokens stop generation even when only EOS is configured.
    assert!(from_lists.is_end_of_generation(from_lists.token_id("<|eot_id|>").unwrap()));
    let chat = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
    assert_eq!(
        from_lists.encode(chat, false).unwrap(),
        from_json.encode(chat, false).unwrap()
    );
}

#[test]
fn bad_tokenizer_inputs_are_named() {
    let err = load_tokenizer(&PathBuf::from("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let err = load_tokenizer(&bad).unwrap_err();
    assert!(err.to_string().contains("tokenizer"), "{err}");
    let err = load_tokenizer(dir.path().join("..").as_path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let truncated = dir.path().join("cut.gguf");
    let Some(spm) = shared("tokenizers/llama2-spm") else {
        return;
    };
    let bytes = std::fs::read(spm.join("vocab.gguf")).unwrap();
    for cut in [3, 10, 30, 1000, bytes.len() / 2] {
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let err = load_tokenizer(&truncated).unwrap_err().to_string();
        assert!(err.contains("cut.gguf"), "cut {cut}: {err}");
    }
}

fn three_turns() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " Hi! "),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ]
}

#[test]
fn chat_templates_render_what_they_define() {
    let llama3 =
        ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>").unwrap();
    assert_eq!(
        llama3.render(&three_turns(), true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let bitnet = ChatTemplate::new(BITNET_TEMPLATE, "<s>", "</s>").unwrap();
    assert_eq!(
        bitnet.render(&three_turns(), true).unwrap(),
        "<s>System: Be brief.<|eot_id|>User: Hi!<|eot_id|>Assistant: Hello.<|eot_id|>\
         User: Bye<|eot_id|>Assistant: "
    );
    // A template as HF writes it, with Python string methods and raise_exception.
    let hf = "{% for m in messages %}{% if m['role'] not in ['user', 'system', 'assistant'] %}\
              {{ raise_exception('bad role ' + m['role']) }}{% endif %}\
              {{ m['role'].upper() }}: {{ m['content'].strip() }}\n{% endfor %}";
    let template = ChatTemplate::new(hf, "", "").unwrap();
    assert_eq!(
        template.render(&three_turns()[..2], false).unwrap(),
        "SYSTEM: Be brief.\nUSER: Hi!\n"
    );
    let err = template
        .render(&[ChatMessage::new("tool", "x")], false)
        .unwrap_err();
    assert!(err.to_string().contains("bad role tool"), "{err}");
    assert!(matches!(
        ChatTemplate::new("{% for %}", "", ""),
        Err(ModelError::Template(_))
    ));
}

#[test]
fn conversation_feeds_only_what_each_turn_adds() {
    let template = ChatTemplate::new(BITNET_TEMPLATE, "<s>", "</s>").unwrap();
    let mut chat = Conversation::new(template, Some("Be brief.".into()));
    assert_eq!(
        chat.user(" Hi! ").unwrap(),
        TurnText::Continue("<s>System: Be brief.<|eot_id|>User: Hi!<|eot_id|>Assistant: ".into())
    );
    chat.assistant("Hello.").unwrap();
    // The model read "Hello." and its end-of-turn token as it wrote them.
    assert_eq!(
        chat.user("Bye").unwrap(),
        TurnText::Continue("User: Bye<|eot_id|>Assistant: ".into())
    );
    assert_eq!(chat.messages().len(), 4);
}

#[test]
fn seeded_sampling_is_reproducible_and_respects_its_filters() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
    let draw = |config: SamplerConfig| -> Vec<u32> {
        let mut sampler = Sampler::new(config).unwrap();
        (0..200).map(|_| sampler.sample(&logits, &[])).collect()
    };
    let config = SamplerConfig {
        seed: 42,
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    let a = draw(config.clone());
    assert_eq!(a, draw(config.clone()), "same seed, same tokens");
    assert_ne!(
        a,
        draw(SamplerConfig {
            seed: 7,
            ..config.clone()
        })
    );
    assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 10);
    // top-k 3 keeps only the three best logits (10.0 at ids with i*37 % 101 == 100, ...).
    let mut best: Vec<u32> = (0..500).collect();
    best.sort_by(|&x, &y| {
        logits[y as usize]
            .total_cmp(&logits[x as usize])
            .then(x.cmp(&y))
    });
    let top3 = draw(SamplerConfig {
        top_k: 3,
        ..config.clone()
    });
    assert!(top3.iter().all(|t| best[..3].contains(t)));
    // Greedy ignores the seed; a repeat penalty moves it off the repeated token.
    let greedy = draw(SamplerConfig::greedy());
    assert!(greedy.iter().all(|&t| t == best[0]));
    let mut penalized = Sampler::new(SamplerConfig {
        repeat_penalty: 100.0,
        ..SamplerConfig::greedy()
    })
    .unwrap();
    assert_ne!(penalized.sample(&logits, &[best[0]]), best[0]);
    for bad in [
        SamplerConfig {
            temperature: -1.0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            top_p: 0.0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            min_p: 1.0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            repeat_penalty: 0.0,
            ..SamplerConfig::default()
        },
    ] {
        assert!(matches!(Sampler::new(bad), Err(ModelError::Sampling(_))));
    }
}

#[test]
fn greedy_generation_through_a_session_equals_the_golden_tokens() {
    let Some(golden) = golden_dir() else { return };
    let Some(parity) = shared("parity/bitnet2b4t_pub") else {
        return;
    };
    let case = common::manifest_case(&golden, "bitnet2b4t_pub");
    let device = Device::flex();
    let model = load_hf_model(&golden.join(case["model_dir"].as_str().unwrap()), &device).unwrap();
    // bitnet.cpp's GGUF of this model carries a generated vocabulary of the right size.
    let tokenizer = load_tokenizer(&parity.join("bitnet2b4t_pub.i2_s.gguf")).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    let options = GenerateOptions {
        max_new_tokens: 16,
        stop_strings: Vec::new(),
    };
    for seq in case["sequences"].as_array().unwrap() {
        let prompt = ids(&seq["input_ids"]);
        let want = ids(&seq["greedy_next16"]);
        let mut session = Session::new(&model, prompt.len() + 16).unwrap();
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut streamed = String::new();
        let out = session
            .generate(&prompt, &tokenizer, &mut sampler, &options, |t| {
                streamed.push_str(t)
            })
            .unwrap();
        // Generation stops early at the vocabulary's EOS; up to there it is the reference.
        assert_eq!(out.tokens, want[..out.tokens.len()], "{}", seq["id"]);
        match out.stop {
            StopReason::MaxTokens => assert_eq!(out.tokens.len(), 16),
            StopReason::EndOfGeneration(t) => assert!(tokenizer.is_end_of_generation(t)),
            other => panic!("unexpected stop {other:?}"),
        }
        assert_eq!(streamed, out.text);
        assert_eq!(out.stats.prompt_tokens, prompt.len());
        assert_eq!(out.stats.generated_tokens, out.tokens.len());
    }
    // A prompt longer than the context is an error before any work, and the session survives.
    let mut session = Session::new(&model, 4).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let err = session
        .generate(&[5, 6, 7, 8, 9], &tokenizer, &mut sampler, &options, |_| {})
        .unwrap_err();
    assert_eq!(
        err,
        ModelError::ContextOverflow {
            cached: 0,
            new: 5,
            context: 4
        }
    );
    let out = session
        .generate(&[5, 6], &tokenizer, &mut sampler, &options, |_| {})
        .unwrap();
    assert!(out.tokens.len() <= 3);
    if out.tokens.len() == 3 {
        assert_eq!(out.stop, StopReason::ContextFull);
    }
}
