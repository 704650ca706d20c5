"""Per-layer top-3 |activation| and median |activation| of a `lesion dump` file (the table of the
massive-activations papers). Usage: layer_magnitudes.py FILE.safetensors"""
import re
import sys

from safetensors.numpy import load_file


def layer_key(name: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", name)
    return -1 if m is None else int(m.group(1))


def main(path: str) -> None:
    tensors = load_file(path)
    print(f"{'site':<22}{'top-1':>10}{'top-2':>10}{'top-3':>10}{'median':>10}  top-1 at (token, dim)")
    for name in sorted(tensors, key=layer_key):
        x = abs(tensors[name].reshape(-1, tensors[name].shape[-1]))  # [tokens, dim]
        flat = x.reshape(-1)
        top = flat.argsort()[-3:][::-1]
        token, dim = divmod(int(top[0]), x.shape[1])
        print(f"{name:<22}" + "".join(f"{flat[i]:>10.2f}" for i in top)
              + f"{float(sorted(flat)[len(flat) // 2]):>10.3f}  ({token}, {dim})")


if __name__ == "__main__":
    main(sys.argv[1])
