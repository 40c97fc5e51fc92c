"""The binding with torch tensors (skipped, exit code 77, where torch is not installed): the
README's Python snippet runs as written; torch tensors through the binding give the same bytes as
Python buffers; torch's own bad input (dtype, layout, device) raises a ValueError naming the
argument with nothing written. Same environment as test_binding.py."""
import array
import ctypes
import os
import re
import subprocess
import sys
import unittest

try:
    import torch
except ImportError:
    sys.exit(77)

import atom

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(os.environ.get("ATOM_HF_DATA", ""), "qwen3-30b-a3b-tiny", "bf16")


class Torch(unittest.TestCase):
    def test_readme_snippet(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        section = readme[readme.index("## Python: host engines"):]
        snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        run = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True,
                             text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("Qwen3MoeForCausalLM", run.stdout)

    def test_tensors_equal_buffers(self):
        layer = atom.load_layer(CHECKPOINT, 1, max_tokens=3)
        h, bs = layer.hidden, layer.block_size
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, h, generator=g).bfloat16()
        residual = torch.randn(3, h, generator=g).bfloat16()
        rows = 3 * bs * layer.kv_heads
        codes = torch.randint(0, 126, (2, rows, layer.head_dim), generator=g, dtype=torch.uint8)
        scales = torch.rand(2, rows, generator=g) * 0.01
        lens = [5, 1, 3]
        table = [0, 1, 2]
        slots = [4, bs, 2 * bs + 2]
        positions = [4, 0, 2]

        def bits(t):
            return array.array("H", t.view(torch.int16).numpy().tobytes())

        b_res, b_out = bits(residual), array.array("H", [0x7fc1] * (3 * h))
        b_cache = tuple(array.array(c, t.numpy().tobytes())
                        for c, t in (("B", codes[0]), ("B", codes[1]), ("f", scales[0]),
                                     ("f", scales[1])))
        layer(bits(x), b_res, b_cache, array.array("i", table), array.array("i", lens),
              array.array("q", positions), array.array("q", slots), out=b_out)

        t_cache = (codes[0].clone(), codes[1].clone(), scales[0].clone(), scales[1].clone())
        t_res = residual.clone()
        i32 = lambda v: torch.tensor(v, dtype=torch.int32)
        t_out = layer(x, t_res, t_cache, i32(table), i32(lens), torch.tensor(positions),
                      torch.tensor(slots))
        self.assertEqual(bits(t_out), b_out)
        self.assertEqual(bits(t_res), b_res)
        for t, b in zip(t_cache, b_cache):
            self.assertEqual(t.numpy().tobytes(), b.tobytes())

    def test_bad_tensors(self):
        layer = atom.load_layer(CHECKPOINT, 1, max_tokens=2)
        h, bs = layer.hidden, layer.block_size
        rows = 2 * bs * layer.kv_heads
        cache = (torch.zeros(rows, layer.head_dim, dtype=torch.uint8),
                 torch.zeros(rows, layer.head_dim, dtype=torch.uint8), torch.zeros(rows),
                 torch.zeros(rows))
        i32 = lambda *v: torch.tensor(v, dtype=torch.int32)
        out = torch.full((2, h), float("nan"), dtype=torch.bfloat16)
        batch = dict(block_table=i32(0, 1), context_lens=i32(1, 1),
                     positions=torch.tensor([0, 0]), slots=torch.tensor([0, bs]))
        x = torch.zeros(2, h, dtype=torch.bfloat16)
        residual = torch.ones(2, h, dtype=torch.bfloat16)
        cases = [
            (dict(x=torch.zeros(2, h)), "x has dtype torch.float32"),
            (dict(x=torch.zeros(h, 2, dtype=torch.bfloat16).t()), "x is not contiguous"),
            (dict(slots=torch.tensor([0, bs], dtype=torch.int32)), "slots has dtype torch.int32"),
        ]
        if torch.cuda.is_available():
            cases.append((dict(residual=residual.cuda()), "residual is on cuda:0"))
        for change, says in cases:
            with self.subTest(says=says):
                a = dict(x=x, residual=residual, cache=cache, **batch)
                a.update(change)
                with self.assertRaises(ValueError) as e:
                    layer(a.pop("x"), a.pop("residual"), a.pop("cache"), out=out, **a)
                self.assertIn(says, str(e.exception))
                self.assertTrue(out.isnan().all())
                self.assertTrue((residual == 1).all())


if __name__ == "__main__":
    unittest.main()
