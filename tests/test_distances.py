"""The scorers' distances with hand-written gradients agree with autograd on the plain expressions."""

import pytest
import torch

from inspectd.methods.distances import quadratic_form, squared_distances, symmetrised


def nearest_neighbour_case(g):
    candidates = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    plain = lambda q: ((q[:, None, :] - candidates) ** 2).sum(-1)  # noqa: E731
    return torch.randn(7, 5, generator=g, dtype=torch.float64), lambda q: squared_distances(q, candidates), plain


def mahalanobis_case(g):
    a = torch.randn(6, 4, 4, generator=g, dtype=torch.float64)
    # an inverse covariance, symmetric up to rounding, then symmetrised as the scorer does
    inv_cov = symmetrised(a @ a.transpose(1, 2) + 1e-9 * torch.randn(6, 4, 4, generator=g, dtype=torch.float64))
    plain = lambda d: (torch.bmm(d[:, None], inv_cov)[:, 0] * d).sum(-1)  # noqa: E731
    return torch.randn(6, 4, generator=g, dtype=torch.float64), lambda d: quadratic_form(d, inv_cov), plain


@pytest.mark.parametrize("case", [nearest_neighbour_case, mahalanobis_case])
def test_hand_written_gradients_match_autograd_on_the_plain_expression(case):
    g = torch.Generator().manual_seed(0)
    x, ours, plain = case(g)
    x.requires_grad_(True)
    torch.testing.assert_close(ours(x), plain(x))
    weights = torch.randn(plain(x).shape, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((plain(x) * weights).sum(), x)
    (got,) = torch.autograd.grad((ours(x) * weights).sum(), x)
    torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(ours, (x,))


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
