"""The op sequence of lesion's transformer (model/transformer.cc) and of its perplexity
reduction (model/perplexity.cc) written in PyTorch, to time candidate changes on a GPU host
before porting them to C++, and to prototype batched sweeps. It is a measuring tool, not a second
implementation: the C++ runtime is the product; numbers that matter are re-measured there.

  python3 bench/forward_profile.py ppl   --shape gpt2 --dtype bfloat16 --batch 32
  python3 bench/forward_profile.py sweep --shape gpt2 --dtype bfloat16 --variants-per-pass 24
  python3 bench/forward_profile.py profile --shape gpt2 --dtype bfloat16 --batch 32 --out DIR

Random-init weights of the shapes of bench/hf_anchor.py; one JSON line per measurement.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "gpt2": dict(layers=12, d=768, heads=12, kv=12, ffn=3072, vocab=50257, seq=1024, gpt2=True),
    "llama7b": dict(layers=32, d=4096, heads=32, kv=32, ffn=11008, vocab=32000, seq=4096, gpt2=False),
}


class Model:
    def __init__(self, shape, dtype, device, opts):
        s = SHAPES[shape]
        self.__dict__.update(s)
        self.hd = self.d // self.heads
        self.opts = opts
        g = torch.Generator(device=device).manual_seed(0)

        def w(*size, scale=0.02):
            return (torch.randn(*size, generator=g, device=device) * scale).to(dtype)

        self.embed = w(self.vocab, self.d)
        self.lm_head = self.embed
        self.pos = w(self.seq, self.d) if self.gpt2 else None
        self.blocks = []
        for _ in range(self.layers):
            b = dict(
                n1=torch.ones(self.d, device=device, dtype=dtype),
                n1b=torch.zeros(self.d, device=device, dtype=dtype) if self.gpt2 else None,
                qkv=w((self.heads + 2 * self.kv) * self.hd, self.d),
                qkvb=w((self.heads + 2 * self.kv) * self.hd) if self.gpt2 else None,
                o=w(self.d, self.heads * self.hd),
                ob=w(self.d) if self.gpt2 else None,
                n2=torch.ones(self.d, device=device, dtype=dtype),
                n2b=torch.zeros(self.d, device=device, dtype=dtype) if self.gpt2 else None,
                up=w(self.ffn * (1 if self.gpt2 else 2), self.d),
                upb=w(self.ffn) if self.gpt2 else None,
                down=w(self.d, self.ffn),
                downb=w(self.d) if self.gpt2 else None,
            )
            self.blocks.append(b)
        self.nf = torch.ones(self.d, device=device, dtype=dtype)
        self.nfb = torch.zeros(self.d, device=device, dtype=dtype) if self.gpt2 else None
        if not self.gpt2:
            inv = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2, device=device).float() / self.hd))
            self.inv_freq = inv

    def norm(self, x, w, b):
        if self.gpt2:
            return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
        if self.opts.norm == "fused":
            return F.rms_norm(x, (x.shape[-1],), w, 1e-6)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * h.to(x.dtype)

    def rotary(self, seq, dtype):
        pos = torch.arange(seq, device=self.inv_freq.device).float()
        f = torch.outer(pos, self.inv_freq)
        emb = torch.cat([f, f], -1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        if self.opts.rope == "cat":
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin
        # sign folded into sin once per forward: one flip copy instead of neg + cat
        return x * cos + x.view(*x.shape[:-1], 2, half).flip(-2).view(x.shape) * sin

    def attention(self, l, h, cos, sin, z_hook):
        blk = self.blocks[l]
        b, s, _ = h.shape
        qkv = F.linear(h, blk["qkv"], blk["qkvb"])
        H, KV, hd = self.heads, self.kv, self.hd
        q = qkv[..., : H * hd].view(b, s, H, hd).transpose(1, 2)
        k = qkv[..., H * hd : (H + KV) * hd].view(b, s, KV, hd).transpose(1, 2)
        v = qkv[..., (H + KV) * hd :].view(b, s, KV, hd).transpose(1, 2)
        if cos is not None:
            q = self.rope(q, cos, sin)
            k = self.rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(hd))
        z = out.transpose(1, 2)
        if z_hook is not None:
            z = z_hook(l, z)
        return z

    def layers_from(self, x, first, cos, sin, z_hook=None, save=None):
        for l in range(first, self.layers):
            if save is not None:
                save[l] = x
            blk = self.blocks[l]
            h = self.norm(x, blk["n1"], blk["n1b"])
            z = self.attention(l, h, cos, sin, z_hook)
            x = x + F.linear(z.flatten(2), blk["o"], blk["ob"])
            m = self.norm(x, blk["n2"], blk["n2b"])
            if self.gpt2:
                a = F.gelu(F.linear(m, blk["up"], blk["upb"]), approximate="tanh")
            else:
                gu = F.linear(m, blk["up"])
                a = F.silu(gu[..., : self.ffn]) * gu[..., self.ffn :]
            x = x + F.linear(a, blk["down"], blk["downb"])
        return x

    def embed_ids(self, ids):
        x = F.embedding(ids, self.embed)
        if self.gpt2:
            x = x + self.pos[: ids.shape[1]]
        cos = sin = None
        if not self.gpt2:
            cos, sin = self.rotary(ids.shape[1], x.dtype)
            if self.opts.rope == "flip":
                half = self.hd // 2
                sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        return x, cos, sin

    def head(self, x):
        return F.linear(self.norm(x, self.nf, self.nfb), self.lm_head)


def nll_rows(logits, ids, opts):
    """Per-row summed NLL [b] of predicting ids[:, 1:] (every position scored)."""
    b, n, vocab = logits.shape
    rows = max(1, (1 << 28) // max(1, (n - 1) * vocab))
    out = []
    for r in range(0, b, rows):
        lg = logits[r : r + rows, :-1].reshape(-1, vocab)
        tgt = ids[r : r + rows, 1:].reshape(-1, 1)
        if opts.nll == "cast":  # what perplexity.cc does now
            lp = torch.log_softmax(lg.float(), -1)
            nll = -lp.gather(1, tgt).squeeze(1)
        elif opts.nll == "lsm_dtype":
            lp = torch.log_softmax(lg, -1, dtype=torch.float32)
            nll = -lp.gather(1, tgt).squeeze(1)
        else:  # "lse": logsumexp of the float logits minus the target logit
            lf = lg.float()
            nll = torch.logsumexp(lf, -1) - lf.gather(1, tgt).squeeze(1)
        out.append(nll.view(-1, n - 1).sum(1, dtype=torch.float64))
    return torch.cat(out)


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def ppl_pass(model, ids, bs, opts):
    n = ids.numel() // model.seq
    x_all = ids[: n * model.seq].view(n, model.seq)
    total = torch.zeros((), dtype=torch.float64, device=ids.device)
    with torch.inference_mode():
        for i in range(0, n, bs):
            b = x_all[i : i + bs]
            x, cos, sin = model.embed_ids(b)
            logits = model.head(model.layers_from(x, 0, cos, sin))
            total += nll_rows(logits, b, opts).sum()
    return total.item() / (n * (model.seq - 1))


def head_sweep(model, ids, windows_per_pass, variants_per_pass, opts, n_tokens):
    """Every single head zeroed, perplexity of each on n_tokens tokens: the baseline once per batch
    of windows, the residual stream entering every layer saved, and variants_per_pass variants at
    once from their layer on (variants sorted by layer)."""
    L, H = model.layers, model.heads
    variants = [(l, h) for l in range(L) for h in range(H)]
    n = n_tokens // model.seq
    x_all = ids[: n * model.seq].view(n, model.seq)
    sums = torch.zeros(len(variants) + 1, dtype=torch.float64, device=ids.device)
    with torch.inference_mode():
        for i in range(0, n, windows_per_pass):
            b = x_all[i : i + windows_per_pass]
            nb = b.shape[0]
            x, cos, sin = model.embed_ids(b)
            saved = {}
            logits = model.head(model.layers_from(x, 0, cos, sin, save=saved))
            sums[-1] += nll_rows(logits, b, opts).sum()
            for g in range(0, len(variants), variants_per_pass):
                group = variants[g : g + variants_per_pass]
                G = len(group)
                first = min(l for l, _ in group)
                masks = {}
                for j, (l, h) in enumerate(group):
                    m = masks.setdefault(l, torch.ones(G, H, dtype=x.dtype))
                    m[j, h] = 0
                masks = {l: m.to(x.device).repeat_interleave(nb, 0).view(G * nb, 1, H, 1) for l, m in masks.items()}

                def hook(l, z, masks=masks):
                    return z * masks[l] if l in masks else z

                xg = saved[first].repeat(G, 1, 1)
                cg = model.head(model.layers_from(xg, first, cos, sin, z_hook=hook))
                per_row = nll_rows(cg, b.repeat(G, 1), opts)
                sums[g : g + G] += per_row.view(G, nb).sum(1)
    return (sums / (n * (model.seq - 1))).exp().tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["ppl", "sweep", "profile"])
    p.add_argument("--shape", default="gpt2")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", default="32")
    p.add_argument("--nll", default="cast", help="cast | lsm_dtype | lse")
    p.add_argument("--norm", default="manual", help="manual | fused (RMSNorm)")
    p.add_argument("--rope", default="cat", help="cat | flip")
    p.add_argument("--windows-per-pass", default="8")
    p.add_argument("--variants-per-pass", default="12")
    p.add_argument("--sweep-tokens", type=int, default=32768)
    p.add_argument("--tokens", type=int, default=0)
    p.add_argument("--out", default=".")
    opts = p.parse_args()
    dev = "cuda"
    dtype = getattr(torch, opts.dtype)
    torch.manual_seed(0)
    model = Model(opts.shape, dtype, dev, opts)
    ntok = opts.tokens or (model.seq * (256 if opts.shape == "gpt2" else 16))
    ids = torch.randint(0, model.vocab, (ntok,), device=dev)
    tag = dict(shape=opts.shape, dtype=opts.dtype, nll=opts.nll, norm=opts.norm, rope=opts.rope)
    if opts.what == "ppl":
        for bs in map(int, opts.batch.split(",")):
            torch.cuda.reset_peak_memory_stats()
            t = timed(lambda bs=bs: ppl_pass(model, ids, bs, opts))
            print(
                json.dumps(
                    dict(
                        what="ppl_eval",
                        impl="proto",
                        bs=bs,
                        tokens=ntok,
                        s=round(t, 4),
                        tok_per_s=round(ntok / t),
                        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        **tag,
                    )
                ),
                flush=True,
            )
    elif opts.what == "sweep":
        for wp in map(int, opts.windows_per_pass.split(",")):
            for vp in map(int, opts.variants_per_pass.split(",")):
                torch.cuda.reset_peak_memory_stats()
                t = timed(lambda wp=wp, vp=vp: head_sweep(model, ids, wp, vp, opts, opts.sweep_tokens), reps=1)
                print(
                    json.dumps(
                        dict(
                            what="head_sweep",
                            impl="proto",
                            windows_per_pass=wp,
                            variants_per_pass=vp,
                            ablations=model.layers * model.heads,
                            tokens_each=opts.sweep_tokens,
                            s=round(t, 3),
                            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                            **tag,
                        )
                    ),
                    flush=True,
                )
    else:
        from torch.profiler import ProfilerActivity, profile

        bs = int(opts.batch.split(",")[0])
        sub = ids[: model.seq * bs * 2]
        ppl_pass(model, sub, bs, opts)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            ppl_pass(model, sub, bs, opts)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
        name = f"{opts.out}/profile_{opts.shape}_{opts.dtype}_{opts.nll}_{opts.norm}_{opts.rope}.txt"
        with open(name, "w") as f:
            f.write(table)
        print(table[-4000:])


if __name__ == "__main__":
    main()
