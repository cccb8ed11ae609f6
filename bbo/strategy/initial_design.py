"""Initial design: the points before the model: the centre of the space (or the priors' best guess
where there are priors), then scrambled Sobol points. LLM warm-start candidates, when given, take
the first slot and the last ones, those only while the candidates measured so far are not worse
than the design's median (the warm-start gate). Advice the data confirm cuts the design short.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bbo.design import Region, center_encoded, sobol_design
from bbo.discrete_search import feasible_grid
from bbo.priors import LogPrior, prior_mode
from bbo.space import Value
from bbo.strategy.base import Suggestion
from bbo.strategy.context import Ask, Context
from bbo.trial import WARMSTART_ORIGINS, Origin

SET_ASIDE = "warm-start candidates set aside: the ones measured are worse than the design's median"
IN_REGION = "a Sobol point in the region the source studies' best trials span"
REPEAT = "a repeat: the design found no feasible point of this small space not measured or pending"
SOBOL_ROUNDS = 8  # batches of 2n Sobol points searched for new ones before a repeat is allowed


class InitialDesign:
    """Space-filling design of one study, with the priors' guess and warm-start candidates."""

    def __init__(self, ctx: Context, region: Region | None = None):
        self.ctx = ctx
        self.region = region  # where the Sobol points go (a transfer design's); None: everywhere

    def suggest(
        self, ask: Ask, n: int, warmstart: Sequence[Suggestion], taken: np.ndarray
    ) -> tuple[list[Suggestion], np.ndarray]:
        """Up to ``n`` design points (none once the design is done) and ``taken`` with them."""
        ctx, trials = self.ctx, ask.trials
        warm = self._fresh_warmstart(warmstart, taken) if len(trials) < ctx.n_initial else []
        size = self.size(ask, len(warm))
        n_design = max(0, min(n, size - len(trials)))
        if not n_design:
            return [], taken
        if warm:
            return self._with_warmstart(ask, n_design, size, warm, taken)
        space, out = ctx.spec.space, []
        n_initial_used = sum(1 for t in trials if t.origin == Origin.INITIAL.value)
        c = self._opening_point(ask.priors, taken) if n_initial_used == 0 else None
        if c is not None:
            reason = "the priors' best guess" if ask.priors else ""
            out.append(Suggestion(c, Origin.INITIAL.value, reason))
            taken = np.vstack([taken, space.encode(c)[None]])
        why = IN_REGION if self.region is not None else ""
        for p in self._sobol(n_design - len(out), n_initial_used, taken):
            xe = space.encode(p)
            repeat = self.ctx.points.too_close(xe, taken)
            out.append(Suggestion(p, Origin.INITIAL.value, REPEAT if repeat else why))
            taken = np.vstack([taken, xe[None]])
        return out, taken

    def _sobol(self, n: int, skip: int, taken: np.ndarray) -> list[dict[str, Value]]:
        """The next ``n`` Sobol points after ``skip``, passing over those that round onto a
        point already taken (ints, ordinals, categoricals) while the sequence offers others: a
        repeat in the design is an evaluation that teaches nothing new."""
        ctx, space, out = self.ctx, self.ctx.spec.space, []
        for _ in range(SOBOL_ROUNDS):
            for p in sobol_design(space, 2 * n, ctx.seed, skip=skip, region=self.region):
                xe = space.encode(p)
                if not ctx.points.too_close(xe, taken):
                    out.append(p)
                    taken = np.vstack([taken, xe[None]])
                    if len(out) == n:
                        return out
            skip += 2 * n
        out += self._untaken_grid_points(n - len(out), taken, skip)
        # (almost) every point of a small discrete space taken: repeats are all that is left
        return out + sobol_design(space, n - len(out), ctx.seed, skip=skip, region=self.region)

    def _untaken_grid_points(self, n: int, taken: np.ndarray, skip: int) -> list[dict[str, Value]]:
        """Up to ``n`` points of a small fully discrete space not taken yet, in a seeded random
        order: Sobol points round onto few of them where the encoding crowds values together
        (an ordinal 1, 2, 4, 8, 16, 1e8 on its value scale, under a linear constraint), and the
        design repeated a measured point while 8 of 12 were untried."""
        space = self.ctx.spec.space
        grid = feasible_grid(space) if n > 0 and self.region is None else None
        if grid is None:
            return []
        out: list[dict[str, Value]] = []
        for row in np.random.default_rng(self.ctx.seed + skip).permutation(grid):
            if not self.ctx.points.too_close(row, taken):
                out.append(space.decode(row))
                taken = np.vstack([taken, row[None]])
                if len(out) == n:
                    break
        return out

    def size(self, ask: Ask, n_warm: int) -> int:
        """How many trials the initial design holds: ``n_initial``, or fewer once the data confirm
        the advice. If the trial at the priors' best guess, or a warm-start candidate, is the best
        of the completed design trials once there are ``d + 1`` of them, the design's remaining
        Sobol points are dropped (the remaining ``n_warm`` candidates still follow) and BO starts,
        weighted by the prior, sooner. Misleading advice is not the best of them, so it leaves the
        design as it was."""
        ctx, trials, priors = self.ctx, ask.trials, ask.priors
        space = ctx.spec.space
        short = min(ctx.n_initial, space.dim + 1)
        if (
            len(trials) >= ctx.n_initial
            or short >= ctx.n_initial
            or not (priors or any(t.origin in WARMSTART_ORIGINS for t in trials))
        ):
            return ctx.n_initial
        data = ask.data
        design = data.design_rows()
        if len(design) < short:
            return ctx.n_initial
        best = data.trials[design[int(np.argmax(data.score[design]))]]
        advised = best.origin in WARMSTART_ORIGINS
        if not advised and priors and not LogPrior(space, priors, ctx.placement).empty:
            guess = prior_mode(space, priors, center_encoded(space))
            advised = ctx.points.too_close(guess, ctx.points.encoding(best)[None])
        return min(ctx.n_initial, len(trials) + n_warm) if advised else ctx.n_initial

    def _opening_point(self, priors, taken: np.ndarray) -> dict[str, Value] | None:
        """The design's opening point: the priors' best guess, else the centre; None where it is
        infeasible or already taken, and in a design confined to a region (its Sobol points
        cover it)."""
        if self.region is not None:
            return None
        space = self.ctx.spec.space
        c = space.decode(prior_mode(space, priors, center_encoded(space)))
        if not space.is_feasible(c) or self.ctx.points.too_close(space.encode(c), taken):
            return None
        return c

    def _fresh_warmstart(
        self, warmstart: Sequence[Suggestion], taken: np.ndarray
    ) -> list[tuple[Suggestion, dict]]:
        """The warm-start candidates not yet used (valid, distinct from every existing point), in
        order."""
        points, out = self.ctx.points, []
        for s in warmstart:
            p = points.valid(s.params)
            if p is None:
                continue
            x = self.ctx.spec.space.encode(p)
            if points.too_close(x, taken):
                continue
            taken = np.vstack([taken, x[None]])
            out.append((s, p))
        return out

    def _with_warmstart(self, ask: Ask, n_design: int, size: int, warm: list, taken: np.ndarray):
        """Initial design with warm-start candidates: the first candidate opens it, the rest close
        it, and those are used only while the candidates measured so far are not worse than the
        design's median (:meth:`_warmstart_agrees`); otherwise their slots go to Sobol points. With
        good candidates the design holds the same points as before, in another order; misleading
        ones cost one evaluation instead of all their slots."""
        space, trials = self.ctx.spec.space, ask.trials
        out: list[Suggestion] = []
        n_initial_used = sum(1 for t in trials if t.origin == Origin.INITIAL.value)
        warm_used = sum(1 for t in trials if t.origin in WARMSTART_ORIGINS)
        note, agrees = "", None  # the gate looks at completed trials only: one verdict per call
        for k in range(n_design):
            if warm and (warm_used == 0 or len(trials) + k >= size - len(warm)):
                if warm_used > 0 and agrees is None:
                    agrees = self._warmstart_agrees(ask)
                if warm_used == 0 or agrees:
                    s, p = warm.pop(0)
                    origin = s.origin or Origin.LLM_WARMSTART.value
                    out.append(Suggestion(p, origin, s.reason, s.rationale))
                    taken = np.vstack([taken, space.encode(p)[None]])
                    warm_used += 1
                    continue
                warm = []
                note = SET_ASIDE
            # right after the first candidate
            p = self._opening_point(ask.priors, taken) if n_initial_used == 0 else None
            reason = "the priors' best guess" if p is not None and ask.priors else note
            if p is None:
                (p,) = sobol_design(space, 1, self.ctx.seed, n_initial_used, self.region)
                reason = IN_REGION if self.region is not None else reason
            n_initial_used += 1
            out.append(Suggestion(p, Origin.INITIAL.value, reason))
            taken = np.vstack([taken, space.encode(p)[None]])
        return out, taken

    @staticmethod
    def _warmstart_agrees(ask: Ask) -> bool:
        """Whether the completed warm-start trials score, in median, at least as well as the median
        completed design trial (True while none is completed: no evidence against them yet)."""
        data = ask.data
        design = data.design_rows()
        warm = [i for i in design if data.trials[i].origin in WARMSTART_ORIGINS]
        if not warm or len(design) < 2:
            return True
        return bool(np.median(data.score[warm]) >= np.median(data.score[design]))
