"""The scorers' distances with hand-written gradients agree with autograd on the plain expressions."""

import pytest
import torch

from inspectd.methods.distances import quadratic_form, squared_distances, symmetrised


def test_squared_distances_match_the_plain_expression_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    weights = torch.randn(7, 3, generator=g, dtype=torch.float64)
    plain = ((query[:, None, :] - candidates) ** 2).sum(-1)
    ours = squared_distances(query, candidates)
    torch.testing.assert_close(ours, plain)
    (expected,) = torch.autograd.grad((plain * weights).sum(), query)
    (got,) = torch.autograd.grad((ours * weights).sum(), query)
    torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(lambda q: squared_distances(q, candidates), (query,))


def test_quadratic_form_matches_the_plain_expression_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, 4, generator=g, dtype=torch.float64)
    inv_cov = symmetrised(a @ a.transpose(1, 2) + 1e-9 * torch.randn(6, 4, 4, generator=g, dtype=torch.float64))
    delta = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, generator=g, dtype=torch.float64)
    plain = (torch.bmm(delta[:, None], inv_cov)[:, 0] * delta).sum(-1)
    ours = quadratic_form(delta, inv_cov)
    torch.testing.assert_close(ours, plain)
    (expected,) = torch.autograd.grad((plain * weights).sum(), delta)
    (got,) = torch.autograd.grad((ours * weights).sum(), delta)
    torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(lambda d: quadratic_form(d, inv_cov), (delta,))


def test_symmetrised_is_symmetric_and_keeps_a_symmetric_matrix():
    m = torch.randn(3, 4, 4)
    s = symmetrised(m)
    torch.testing.assert_close(s, s.transpose(1, 2))
    torch.testing.assert_close(symmetrised(s), s)


def test_constants_that_ask_for_a_gradient_are_refused():
    query = torch.randn(2, 3)
    with pytest.raises(ValueError, match="candidates are constants"):
        squared_distances(query, torch.randn(2, 4, 3, requires_grad=True))
    with pytest.raises(ValueError, match="matrices are constants"):
        quadratic_form(query, torch.randn(2, 3, 3, requires_grad=True))
