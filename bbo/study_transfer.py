"""The transfer sources of one study (:mod:`bbo.transfer`) as its asks use them: their data, read
through storage and never written, and the record of what the strategy made of them."""

from __future__ import annotations

from bbo.errors import NotFoundError, SpecError
from bbo.spec import StudySpec
from bbo.storage import Storage
from bbo.strategy.base import UsesSources
from bbo.study_requests import canonical_json
from bbo.transfer import MAX_SOURCE_TRIALS, SourceData, kept_source_trials, source_refs
from bbo.trial import Trial, TrialState

# a source is read again once its completed trials changed by more than this share of those read
# (any change of a source under 10): a source still running changed on nearly every ask, and each
# target ask re-read all of it and refit its GP (a 20,000-trial source: 1.8-3 s an ask)
SOURCE_REREAD_SHARE = 0.1
SOURCE_PAGE = 5000  # a source's trials read at once: memory while reading one is this and the kept


class StudySources:
    """The sources of the study ``uid`` of ``tenant``, each re-read only when its number of
    completed trials changed by more than :data:`SOURCE_REREAD_SHARE`."""

    def __init__(self, storage: Storage, spec: StudySpec, uid: str, tenant: str):
        self.storage, self.spec, self.uid, self.tenant = storage, spec, uid, tenant
        self._read: dict[str, tuple[int, SourceData]] = {}  # uid -> (completed, data)

    def read(self, transfer: dict | None) -> list[SourceData] | None:
        """The live sources' data (None without transfer). A source is looked up by the uid it had
        when the study was created (``transfer``, the study's record of them), so a deleted one (or
        one deleted and re-created under its name) is left out."""
        refs = source_refs(transfer)
        if not self.spec.transfer.enabled:
            return None
        out = []
        for ref in refs:
            try:
                rec = self.storage.get_study_by_uid(ref.uid)
                if rec is None or rec.tenant != self.tenant:
                    continue
                done = self.storage.trial_counts(ref.uid).get(TrialState.COMPLETED.value, 0)
                hit = self._read.get(ref.uid)
                if hit is None or abs(done - hit[0]) > SOURCE_REREAD_SHARE * hit[0]:
                    sspec = StudySpec.from_dict(rec.spec, strict=False)
                    trials = self._completed(ref.uid, sspec)
                    hit = (done, SourceData(ref.uid, rec.name, sspec, trials))
                    self._read[ref.uid] = hit
                out.append(hit[1])
            except (NotFoundError, SpecError):  # deleted meanwhile, or a spec this cannot read
                continue
        live = {s.uid for s in out}
        self._read = {k: v for k, v in self._read.items() if k in live}
        return out

    def _completed(self, uid: str, spec: StudySpec) -> list[Trial]:
        """The source's completed trials, at most :data:`~bbo.transfer.MAX_SOURCE_TRIALS` of them
        (:func:`~bbo.transfer.kept_source_trials`), read :data:`SOURCE_PAGE` at a time: a source
        of 10,000 trials held 25 MB in every study transferring from it, and each of its asks
        passed over all of them (8 such sources: 1.1-2 s an ask before any model, 200 MB)."""
        kept: list[Trial] = []
        after = 0
        while True:
            page = self.storage.list_trials(uid, [TrialState.COMPLETED], after, SOURCE_PAGE)
            kept = kept_source_trials(self.spec, spec, uid, kept + page, MAX_SOURCE_TRIALS)
            if len(page) < SOURCE_PAGE:
                return kept
            after = page[-1].id

    def record(
        self, transfer: dict | None, sources: list[SourceData], strategy: object
    ) -> dict | None:
        """Store the weights ``strategy`` gave the sources, and which sources are gone, where they
        changed (one write of this study's row; the sources' rows are never written); returns the
        new transfer record, None where nothing changed."""
        if not transfer:
            return None
        report = strategy.transfer_report() if isinstance(strategy, UsesSources) else None
        new = _with_live(transfer, report, {s.uid for s in sources})
        if canonical_json(new) == canonical_json(transfer):
            return None
        self.storage.set_study_transfer(self.uid, new)
        return new

    def current(self, transfer: dict | None) -> dict | None:
        """``transfer`` as it reads now: a source deleted since this study's last ask is gone and
        has no weight (one count query over the sources; nothing is written)."""
        refs = source_refs(transfer)
        if not transfer or not refs:
            return transfer
        live = set(self.storage.completed_counts([r.uid for r in refs]))
        return _with_live(transfer, None, live)


def _with_live(transfer: dict, report: dict | None, live: set[str]) -> dict:
    """``transfer`` with the weights of ``report`` (else the stored ones) and the sources not in
    ``live`` listed as deleted, with no weight."""
    # an ask with no source left to weigh reports none: the stored weights lose the gone ones
    report = report or transfer.get("weights") or None
    new = dict(transfer)
    new["deleted"] = sorted(r.uid for r in source_refs(transfer) if r.uid not in live)
    if report is not None:
        # a source deleted since the strategy last weighed it has no weight now (its last
        # weight read as if the later asks still used it)
        by_metric = {
            m: {u: w for u, w in ws.items() if u in live} for m, ws in report["by_metric"].items()
        }
        target = {
            m: w
            if by_metric.get(m) == report["by_metric"].get(m)
            else 1.0 - sum(by_metric[m].values())
            for m, w in report["target"].items()
        }
        new["weights"] = {**report, "by_metric": by_metric, "target": target}
    return new
