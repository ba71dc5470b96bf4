"""Write tests/data/train_reference.safetensors: the weights SAETrainer gave for a tiny SAE of every architecture
BEFORE the trainer was rebuilt on TrainConfig (issue 17), so tests/test_train_reference.py can check the rebuilt
trainer gives the same. It was run once with the old code on the PYTHONPATH:

    git worktree add /tmp/train-ref d5478b8
    PYTHONPATH=/tmp/train-ref python tests/data/make_train_reference.py tests/data/train_reference.safetensors

`run(arch)` is also what the test calls, with the code under test."""
import sys
import torch

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")

def run(arch: str) -> dict:
    "Train a 16→64 SAE of `arch` for 2 epochs of 256 rows (batch 32) through the DataLoader path; its final weights."
    from deeplens.sae import SparseAutoencoder
    from deeplens.train import SAETrainer
    g = torch.Generator().manual_seed(1)
    data = torch.randn(256, 16, generator=g) * torch.rand(256, 1, generator=g) * 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    kw = dict(k=4) if arch in ("topk", "batchtopk", "matryoshka") else ({} if arch == "jumprelu" else dict(beta_l1=0.05))
    if arch == "matryoshka": kw["matryoshka_widths"] = [16, 48]
    sae = SparseAutoencoder(16, 64, architecture=arch, **kw)
    tr = SAETrainer(sae, train_dataloader=loader, eval_dataloader=loader, epochs=2, lr=3e-3, lrs_type="cosine",
                    warmup_fraction=0.2, eval_steps=4, save_checkpoints=False, progress=False, random_seed=5, log_steps=2)
    tr.train()
    return {f"{arch}.{k}": v.detach().clone().contiguous() for k, v in tr.model.state_dict().items()}

if __name__ == "__main__":
    from safetensors.torch import save_file
    out = {}
    for a in ARCHS: out.update(run(a))
    save_file(out, sys.argv[1])
    print(f"{len(out)} tensors -> {sys.argv[1]}")
