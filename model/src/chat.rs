//! Chat templates (Jinja, as Hugging Face and GGUF files store them) and multi-turn
//! conversations that only ever feed the model the text a new turn adds.

use minijinja::{
    Environment, Error as JinjaError, ErrorKind, Value, context, syntax::SyntaxConfig,
};

use crate::error::{ModelError, Result};

/// bitnet.cpp's built-in chat format for BitNet b1.58 2B4T: `System: `, `User: ` and
/// `Assistant: ` turns, each closed by `<|eot_id|>`.
pub const BITNET_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message.role == 'system' %}System: {% elif message.role == 'user' %}User: {% else %}Assistant: {% endif %}\
{{ message.content | trim }}<|eot_id|>{% endfor %}\
{% if add_generation_prompt %}Assistant: {% endif %}";

/// The Llama 3 instruct format: a header per turn, content trimmed, `<|eot_id|>` after each.
pub const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>{% endfor %}\
{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// One turn of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A turn by `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }

    fn to_value(&self) -> Value {
        Value::from_pairs([
            ("role", self.role.as_str()),
            ("content", self.content.as_str()),
        ])
    }
}

/// A compiled chat template with the BOS/EOS texts it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

fn template_error(e: JinjaError) -> ModelError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ModelError::Template(message)
}

impl ChatTemplate {
    /// The source of a built-in template by name (`bitnet` or `llama3`).
    pub fn builtin(name: &str) -> Option<&'static str> {
        match name {
            "bitnet" => Some(BITNET_TEMPLATE),
            "llama3" => Some(LLAMA3_TEMPLATE),
            _ => None,
        }
    }

    /// Compiles `source` with the whitespace rules Hugging Face renders templates with
    /// (`trim_blocks`, `lstrip_blocks`) and the Python string methods templates call.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The text of `messages`, ending with the assistant's header when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(context! {
                messages => messages.iter().map(ChatMessage::to_value).collect::<Vec<_>>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(template_error)
    }

    /// The BOS text the template is given.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
}

/// The text a new user turn adds to what the model has already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnText {
    /// Append this to the existing context.
    Continue(String),
    /// The template rendered the history differently: start over from this full text.
    Restart(String),
}

/// A chat whose history is rendered once: each new user turn yields only the text that turn
/// adds, so the KV cache of earlier turns is reused (as llama.cpp's conversation mode does).
#[derive(Debug)]
pub struct Conversation {
    template: ChatTemplate,
    messages: Vec<ChatMessage>,
    rendered: String,
}

impl Conversation {
    /// A chat that starts with `system` as the system prompt, if given.
    pub fn new(template: ChatTemplate, system: Option<String>) -> Self {
        let messages = system
            .into_iter()
            .map(|content| ChatMessage::new("system", content))
            .collect();
        Self {
            template,
            messages,
            rendered: String::new(),
        }
    }

    /// Adds a user turn; returns the text to feed the model, ending with the assistant header.
    pub fn user(&mut self, content: impl Into<String>) -> Result<TurnText> {
        self.messages.push(ChatMessage::new("user", content));
        let full = self.template.render(&self.messages, true)?;
        Ok(match full.strip_prefix(self.rendered.as_str()) {
            Some(added) => TurnText::Continue(added.to_string()),
            None => TurnText::Restart(full),
        })
    }

    /// Records the assistant's reply, which the model has already read as it wrote it.
    pub fn assistant(&mut self, content: impl Into<String>) -> Result<()> {
        self.messages.push(ChatMessage::new("assistant", content));
        self.rendered = self.template.render(&self.messages, false)?;
        Ok(())
    }

    /// Every turn so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }
}
