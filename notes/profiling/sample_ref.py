def _sample_ref(
    logits: torch.Tensor, temps: torch.Tensor, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row of fp32 ``logits`` (b, V) at ``temps`` (b,).

    Returns ``(tokens (b,) int64, logprob (b,), sampling_entropy (b,))``: log-prob and entropy
    under ``softmax(logits / T)``, from the same scaled logits the token was drawn from; both 0
    for greedy rows (T = 0), which take the argmax (lowest id on ties).
    """
    from agentropy.entropy import apply_temperature, logprobs_and_entropy

    greedy = temps == 0
    # Temperature applied once, to fp32 logits, before softmax (DESIGN.md); greedy rows are
    # scaled by 1 and never drawn from.
    scaled = apply_temperature(logits, torch.where(greedy, torch.ones_like(temps), temps))
    probs = torch.softmax(scaled, dim=-1)  # (b, V)
    tokens = logits.argmax(dim=-1)
    draw = (~greedy).nonzero().squeeze(1).tolist()
    if draw:
        # Inverse-CDF draw, one uniform per token from the row's own generator, so the draw does
        # not depend on which other rows share the batch; the CDFs of all drawing rows in one
        # batched cumsum/searchsorted (row by row, the same bits, at a fraction of the cost).
        u = torch.stack(
            [torch.rand((), generator=generators[j], dtype=torch.float64) for j in draw]
        ).to(logits.device)
        rows = torch.tensor(draw, device=logits.device)
        cdf = probs[rows].double().cumsum(1)  # (d, V)
        k = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        tokens[rows] = k.clamp_max(logits.shape[-1] - 1)
    logprob, sampling_entropy = logprobs_and_entropy(scaled, tokens)  # T already applied
    zero = torch.zeros_like(logprob)
    return tokens, torch.where(greedy, zero, logprob), torch.where(greedy, zero, sampling_entropy)

