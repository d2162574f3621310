"""Provider rules the batch lane keeps beyond a shard file's lines and bytes: how many batch files the provider
holds at once (Kimi: 1,000 per organisation), and what a refusal the provider explains asks the user to do."""

from __future__ import annotations

from ..errors import FatalProviderError
from ..spec.presets import BatchAPI


def check_file_room(api: BatchAPI, held: int | None, base_url: str) -> None:
    """Stop before an upload the provider would refuse for the files it already holds (`held`: its count of
    batch-purpose files, None when it did not say): the message says what to delete."""
    if api.max_files is None or held is None or held < api.max_files:
        return
    raise FatalProviderError(
        f"{api.title} already holds {held:,} batch files, its most per organisation is {api.max_files:,}: delete "
        f"the ones no batch still needs (DELETE {base_url.rstrip('/')}/files/FILE_ID, or in the console; batchrun "
        "deletes its own once harvested unless batch.keep_files), then run the same command again: nothing was "
        "recorded and no file was uploaded"
    )


def refusal_hint(api: BatchAPI, code: str | None, message: str) -> str:
    """What to do about an upload or batch the provider refused as it is: the preset's hint where its code or
    message names the cause (Qianfan: BOS not activated), else that asking again would not change it."""
    text = f"{code or ''} {message}".lower()
    for word, hint in api.refusal_hints:
        if word in text:
            return hint
    return "the provider refuses it as it is, and asking again would not change that"
