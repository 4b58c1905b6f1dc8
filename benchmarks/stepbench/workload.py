"""What every variant runs on: a GPT-NeoX of a known shape with random weights, random batches,
and the settings of one benchmark run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peel.unlearning.objectives import Batch
from peel.unlearning.schedules import retain_layer_set

# GPT-NeoX shapes. pythia-160m is the headline (the shape of the research-cost note) and of the
# long-sequence preset; pythia-1b is for the GPU runs; small and tiny keep the quick preset and
# the tests fast.
MODEL_SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024),
    "pythia-160m": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "pythia-1b": dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("lora", "full")


@dataclass
class Settings:
    model: str
    batch_size: int  # examples per forget batch and per retain batch
    seq_len: int
    warmup: int
    steps: int
    sweep_steps: int
    sweep_points: int
    modes: list[str] = field(default_factory=lambda: list(MODES))
    target_layer: int | None = None  # default: the second phase of the schedule
    retain_layers: str = "all"  # all | target | comma-separated layer list
    forget_loss: str = "random_ce"
    sweep_layers: list[int] | None = None
    padding: int = 0  # pad tokens at the end of the last example of each batch (default seq_len // 8)
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    lr: float = 1e-4
    forget_coef: float = 1.0
    retain_coef: float = 1.0
    max_grad_norm: float = 1.0
    loss_chunk_tokens: int = 1024  # peel's train.loss_chunk_tokens
    compile: bool = False  # peel's train.compile
    gradient_checkpointing: bool | str = False  # peel's train.gradient_checkpointing: false, true or "selective"
    memory_steps: int = 2  # the second step is the first whose peak includes the optimizer state
    memory_jobs: int = 1  # memory workers at once (CPU); one at a time leaves each the machine's memory
    seed: int = 0

    @property
    def num_layers(self) -> int:
        return MODEL_SHAPES[self.model]["num_hidden_layers"]

    @property
    def schedule(self) -> list[int]:
        """Full fine-tuning's target layers, back to front, about four of them."""
        return list(range(self.num_layers - 1, -1, -max(1, self.num_layers // 4)))

    @property
    def layer(self) -> int:
        return self.schedule[1] if self.target_layer is None else self.target_layer

    def retain_layer_list(self, layer: int) -> list[int]:
        spec = self.retain_layers
        chosen = spec if spec in ("all", "target") else [int(part) for part in spec.split(",")]
        return retain_layer_set(chosen, layer, self.num_layers)


def build_model(settings: Settings) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(**MODEL_SHAPES[settings.model], max_position_embeddings=max(2048, settings.seq_len))
    torch.manual_seed(settings.seed)
    # Built directly on the device in the benchmark dtype, so no full-precision copy inflates a peak.
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[settings.dtype], attn_implementation="sdpa")
    return model.eval()  # as from_pretrained returns it (dropout is 0 in these configs anyway)


def make_batch(settings: Settings, seed: int, with_targets: bool) -> Batch:
    """Random token ids; the last example ends in padding so masks are exercised. Right padding, as
    the engine's corpora make it (so marked: peel's passes run without the attention mask; the
    reference and the floor give the model the mask, as plain PyTorch code does)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = MODEL_SHAPES[settings.model]["vocab_size"]
    shape = (settings.batch_size, settings.seq_len)
    input_ids = torch.randint(vocab, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    padding = settings.padding or settings.seq_len // 8
    attention_mask[-1, settings.seq_len - padding :] = 0
    input_ids[attention_mask == 0] = 0
    targets = torch.randint(vocab, shape, generator=generator).to(settings.device) if with_targets else None
    return Batch(input_ids.to(settings.device), attention_mask.to(settings.device), targets, right_padded=True)


def batches(settings: Settings) -> tuple[Batch, Batch]:
    """The (forget, retain) batches every variant steps on."""
    return make_batch(settings, 1, with_targets=True), make_batch(settings, 2, with_targets=False)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's weights and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
