"""`tuneloop chat`: talk to any model through its chat template, one-shot or interactively."""

from __future__ import annotations

import click


@click.command()
@click.option("--model", "-m", "model_ref", default="smollm2-135m-instruct", show_default=True,
              help="Catalog name, hub id, local dir, .gguf file or run directory.")
@click.option("--system", help="System prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 = greedy.")
@click.argument("message", required=False)
def chat(model_ref, system, max_new_tokens, temperature, message):
    """Answer MESSAGE (one-shot), or start an interactive chat when no MESSAGE is given."""
    from tuneloop.models.generation import generate_chat
    from tuneloop.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_ref)
    history = [{"role": "system", "content": system}] if system else []

    def answer(text: str) -> str:
        history.append({"role": "user", "content": text})
        reply = generate_chat(model, tokenizer, [history], max_new_tokens, temperature)[0].text
        history.append({"role": "assistant", "content": reply})
        return reply

    if message:
        click.echo(answer(message))
        return
    click.echo("Interactive chat; an empty line or Ctrl-D ends it.", err=True)
    while True:
        try:
            text = click.prompt("you", default="", show_default=False)
        except (EOFError, click.exceptions.Abort):
            break
        if not text.strip():
            break
        click.echo(f"model: {answer(text)}")
