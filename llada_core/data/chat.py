"""The one chat template, applied at the token level so the prompt length is exact.

  prompt   = <|bos|> ( <|role|> content <|eot|> )*  <|assistant|>
  response = content <|eot|> <|eos|>

Each message's content is encoded on its own, so no BPE merge can straddle the prompt/response
boundary. In multi-turn `messages`, the last message must be the assistant's: it is the response
(the only supervised part); every earlier turn belongs to the prompt.
"""

from __future__ import annotations

from llada_core.data.tokenizer import LladaTokenizer

ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    pass


def to_messages(record: dict) -> list[dict]:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ChatFormatError("'messages' must be a non-empty list")
        return messages
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]


def encode_prompt(tok: LladaTokenizer, messages: list[dict]) -> list[int]:
    ids = [tok.id_of("bos")]
    for msg in messages:
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ChatFormatError(f"bad message {msg!r}: role must be one of {ROLES}, content a string")
        ids += [tok.id_of(role), *tok.encode(content), tok.id_of("eot")]
    return ids + [tok.id_of("assistant")]


def encode_response(tok: LladaTokenizer, text: str) -> list[int]:
    if not isinstance(text, str):
        raise ChatFormatError(f"response must be a string, got {type(text).__name__}")
    return [*tok.encode(text), tok.id_of("eot"), tok.id_of("eos")]


def encode_example(tok: LladaTokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """(input_ids, prompt_len) for a conversation whose last turn is the assistant's response."""
    *context, last = messages
    if last.get("role") != "assistant":
        raise ChatFormatError("the last message must be the assistant's response")
    prompt = encode_prompt(tok, context)
    return prompt + encode_response(tok, last.get("content")), len(prompt)
