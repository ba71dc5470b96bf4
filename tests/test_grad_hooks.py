"Tests for the gradient hook context managers in `deeplens.hooks`."
import warnings

import pytest
import torch
from torch import nn

from deeplens.hooks import (autograd_node_hook, capture_backward_pre, capture_gradients,
                            capture_kwargs_hook, tensor_grad_hook)


def no_hooks(m: nn.Module) -> bool:
    return not any([m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks,
                    m._forward_pre_hooks_with_kwargs, m._forward_hooks_with_kwargs])


@pytest.fixture
def lin():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


@pytest.fixture
def x():
    return torch.randn(4, 3, requires_grad=True)


@pytest.fixture
def c():
    return torch.randn(4, 2)   # loss = (y * c).sum(), so dL/dy = c


class Boom(Exception):
    pass


# ---------------------------------------------------------------- capture_gradients

def test_capture_gradients_output(lin, x, c):
    with capture_gradients(lin) as g:
        assert g.grad is None and g.grads == []
        (lin(x) * c).sum().backward()
    assert len(g.grads) == 1 and torch.allclose(g.grad, c)
    assert not g.grad.requires_grad
    assert no_hooks(lin)


def test_capture_gradients_input_is_WT_grad_out(lin, x, c):
    with capture_gradients(lin, site="input") as g:
        (lin(x) * c).sum().backward()
    # y = x W^T + b  =>  dL/dx = dL/dy @ W
    assert torch.allclose(g.grad, c @ lin.weight)
    assert torch.allclose(g.grad, x.grad)
    assert no_hooks(lin)


def test_capture_gradients_input_is_module_share_only(lin, x, c):
    with capture_gradients(lin, site="input") as g:
        ((lin(x) * c).sum() + x.sum()).backward()          # x also used outside the module
    assert torch.allclose(g.grad, c @ lin.weight)
    assert torch.allclose(x.grad, c @ lin.weight + 1)


def test_capture_gradients_one_per_backward_and_clones(lin, x, c):
    with capture_gradients(lin) as g:
        (lin(x) * c).sum().backward()
        (lin(x) * 3 * c).sum().backward()
    assert len(g.grads) == 2
    assert torch.allclose(g.grads[0], c) and torch.allclose(g.grad, 3 * c)


def test_capture_gradients_in_sequential_with_relu(x, c):
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with capture_gradients(seq[0]) as out, capture_gradients(seq[2], site="input") as inp:
        (seq(x) * c).sum().backward()
    h = seq[0](x)
    assert torch.allclose(inp.grad, c @ seq[2].weight)                       # grad w.r.t. relu(h)
    assert torch.allclose(out.grad, (c @ seq[2].weight) * (h > 0).float())  # through the relu
    assert all(no_hooks(m) for m in seq)


def test_capture_gradients_output_allows_inplace_edit(lin, x):
    with capture_gradients(lin) as g:
        y = lin(x)
        y += 1
        (2 * y).sum().backward()
    assert torch.allclose(g.grad, torch.full((4, 2), 2.0))


def test_capture_gradients_tuple_output(x):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            y = self.lin(x)
            return y, y.detach()

    m = Pair()
    with capture_gradients(m) as g:
        (m(x)[0] * 5).sum().backward()
    assert torch.allclose(g.grad, torch.full((4, 2), 5.0))
    assert no_hooks(m)


def test_capture_gradients_bad_site(lin):
    with pytest.raises(ValueError) as e:
        with capture_gradients(lin, site="weight"):
            pass
    assert "'output'" in str(e.value) and "'input'" in str(e.value) and "'weight'" in str(e.value)
    assert no_hooks(lin)


@pytest.mark.parametrize("site", ["output", "input"])
def test_capture_gradients_cleanup_on_exception(lin, x, site):
    with pytest.raises(Boom):
        with capture_gradients(lin, site=site):
            lin(x).sum().backward()
            raise Boom
    assert no_hooks(lin)


@pytest.mark.parametrize("site", ["output", "input"])
def test_capture_gradients_backward_after_exit_not_recorded(lin, x, site):
    with capture_gradients(lin, site=site) as g:
        y = lin(x)
    y.sum().backward()
    assert g.grad is None and g.grads == []


def test_capture_gradients_input_by_keyword_refused(lin, x):
    with pytest.raises(ValueError, match="positionally"):
        with capture_gradients(lin, site="input"):
            lin(input=x)
    assert no_hooks(lin)


def test_capture_gradients_input_without_grad_records_nothing(lin, c):
    data = torch.randn(4, 3)                       # raw data: no gradient w.r.t. it exists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that no input requires grad
        with capture_gradients(lin, site="input") as g:
            (lin(data) * c).sum().backward()
    assert g.grad is None


# ---------------------------------------------------------------- capture_kwargs_hook

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x, scale=1.0, mask=None, name=None):
        y = self.lin(x) * scale
        return y if mask is None else y * mask


def test_capture_kwargs_hook_records_args_and_kwargs(x):
    m, mask = Scaled(), torch.tensor([1.0, 0.0])
    with capture_kwargs_hook(m) as k:
        assert k.last is None
        m(x, scale=2.0, mask=mask, name="first")
        m(x)
    assert len(k.calls) == 2
    args, kwargs = k.calls[0]
    assert len(args) == 1 and torch.equal(args[0], x) and not args[0].requires_grad   # exact (and below): recorded copies
    assert kwargs["scale"] == 2.0 and kwargs["name"] == "first" and torch.equal(kwargs["mask"], mask)
    assert k.last[1] == {} and torch.equal(k.last[0][0], x)
    assert torch.allclose(m(*args, **kwargs), m(x, scale=2.0, mask=mask))   # replay
    assert no_hooks(m)


def test_capture_kwargs_hook_snapshot_not_alias():
    m, t = Scaled(), torch.ones(4, 3)
    with capture_kwargs_hook(m) as k:
        m(t)
    t.add_(1)
    assert torch.equal(k.last[0][0], torch.ones(4, 3))   # exact: a copy of ones


def test_capture_kwargs_hook_cleanup_on_exception(x):
    m = Scaled()
    with pytest.raises(Boom):
        with capture_kwargs_hook(m):
            m(x, scale=3.0)
            raise Boom
    assert no_hooks(m)


# ---------------------------------------------------------------- tensor_grad_hook

def test_tensor_grad_hook_records(x, c):
    W = torch.randn(2, 3)
    with tensor_grad_hook(lambda: x) as g:
        (x @ W.T * c).sum().backward()
    assert torch.allclose(g.grad, c @ W) and torch.allclose(x.grad, c @ W)


def test_tensor_grad_hook_replaces(x, c):
    W = torch.randn(2, 3)
    h = x * 3
    with tensor_grad_hook(lambda: h, fn=lambda g: 0.5 * g) as g:
        (h @ W.T * c).sum().backward()
    assert torch.allclose(g.grad, c @ W)                 # recorded as it arrived
    assert torch.allclose(x.grad, 3 * 0.5 * (c @ W))     # downstream saw the replacement


def test_tensor_grad_hook_fn_none_keeps(x):
    with tensor_grad_hook(lambda: x, fn=lambda g: None):
        (x * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))


def test_tensor_grad_hook_cleanup_on_exception(x):
    with pytest.raises(Boom):
        with tensor_grad_hook(lambda: x, fn=torch.zeros_like):
            raise Boom
    (x * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))
    assert not x._backward_hooks


@pytest.mark.parametrize("bad,err", [
    ("tensor", TypeError), ("int", TypeError), ("nograd", ValueError)])
def test_tensor_grad_hook_bad_input(x, bad, err):
    get = {"tensor": x, "int": lambda: 3, "nograd": lambda: torch.ones(2)}[bad]
    with pytest.raises(err):
        with tensor_grad_hook(get):
            pass


# ---------------------------------------------------------------- autograd_node_hook

def test_autograd_node_hook_matmul(x, c):
    W = torch.randn(3, 2, requires_grad=True)
    y = x @ W
    with autograd_node_hook(y) as n:
        assert n.grad_inputs is None and n.grad_outputs is None
        (y * c).sum().backward()
    assert len(n.calls) == 1
    assert torch.allclose(n.grad_outputs[0], c)
    assert torch.allclose(n.grad_inputs[0], c @ W.T)      # dL/dx
    assert torch.allclose(n.grad_inputs[1], x.T @ c)      # dL/dW
    assert torch.allclose(n.grad_inputs[1], W.grad)


def test_autograd_node_hook_cleanup_on_exception(x, c):
    W = torch.randn(3, 2, requires_grad=True)
    y = x @ W
    with pytest.raises(Boom):
        with autograd_node_hook(y) as n:
            raise Boom
    (y * c).sum().backward()
    assert n.calls == []


def test_autograd_node_hook_refuses_leaves(x):
    with pytest.raises(ValueError, match="non-leaf"):
        with autograd_node_hook(x):
            pass
    with torch.no_grad():
        z = x * 2
    with pytest.raises(ValueError, match="non-leaf"):
        with autograd_node_hook(z):
            pass
    with pytest.raises(TypeError):
        with autograd_node_hook([1.0]):
            pass


# ---------------------------------------------------------------- capture_backward_pre

def test_capture_backward_pre_records(lin, x, c):
    with capture_backward_pre(lin) as g:
        (lin(x) * c).sum().backward()
    assert torch.allclose(g.grad, c)
    assert torch.allclose(lin.weight.grad, c.T @ x) and torch.allclose(x.grad, c @ lin.weight)
    assert no_hooks(lin)


def test_capture_backward_pre_replaces(lin, x, c):
    with capture_backward_pre(lin, fn=lambda g: 2 * g) as g:
        (lin(x) * c).sum().backward()
    assert torch.allclose(g.grad, c)
    assert torch.allclose(lin.weight.grad, 2 * c.T @ x)
    assert torch.allclose(lin.bias.grad, 2 * c.sum(0))
    assert torch.allclose(x.grad, 2 * c @ lin.weight)


def test_capture_backward_pre_cleanup_on_exception(lin, x):
    with pytest.raises(Boom):
        with capture_backward_pre(lin, fn=torch.zeros_like):
            lin(x).sum().backward()
            raise Boom
    assert no_hooks(lin)


def test_capture_backward_pre_off_after_exit(lin, x):
    with capture_backward_pre(lin, fn=torch.zeros_like) as g:
        y = lin(x)
    y.sum().backward()                    # torch still runs the hook it collected in forward
    assert g.grad is None
    assert torch.allclose(lin.bias.grad, torch.full((2,), 4.0))   # and it did not zero anything
