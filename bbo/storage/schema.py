"""Tables of the bbo database (SQLAlchemy Core). Changes here need an Alembic migration in
``bbo/storage/migrations/versions`` (a test compares this metadata with the migrated schema).

Times are epoch seconds (float) so SQLite and PostgreSQL store them alike.
"""

from __future__ import annotations

import sqlalchemy as sa

# an LLM call's model name and token counts, as the endpoint reported them, are stored within
# these (SqlStorage.log_llm_call): PostgreSQL refuses more where SQLite stores anything
MODEL_CHARS = 256
MAX_INT32 = 2**31 - 1


class _NoNul(sa.types.TypeDecorator):
    """A string PostgreSQL can store: it refuses NUL characters, which become U+FFFD here (on every
    dialect, so a SQLite database can always be copied to PostgreSQL)."""

    cache_ok = True

    def process_bind_param(self, value, dialect):
        return (
            value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value
        )


class Text(_NoNul):
    impl = sa.Text
    cache_ok = (
        True  # SQLAlchemy reads it per class: without it, statements using the type are not cached
    )


class String(_NoNul):
    impl = sa.String
    cache_ok = True


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Row ids stay inside bbo.storage and are never reused (SQLite AUTOINCREMENT; PostgreSQL
# sequences): a study is known outside by its random ``uid``.
studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uid", String(64), nullable=False),  # opaque, random: the study's identity
    sa.Column("tenant", String(128), nullable=False),
    sa.Column("name", String(128), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("spec_hash", String(64), nullable=False),
    sa.Column(
        "seed", sa.BigInteger, nullable=False
    ),  # the strategy's seed (the spec's, or drawn once)
    sa.Column("state", String(32), nullable=False),
    sa.Column("state_reason", Text, nullable=False),
    sa.Column("trial_counter", sa.BigInteger, nullable=False),  # last allocated trial number
    sa.Column("llm_counter", sa.BigInteger, nullable=False),  # last allocated LLM call number
    sa.Column("created_at", sa.Float, nullable=False),
    # the newest stamp of the study's intermediate values: the next is later, whatever the clock
    sa.Column("report_clock", sa.Float, nullable=True),
    # transfer sources (fixed at creation) and their latest weights; null without transfer
    sa.Column("transfer", sa.JSON, nullable=True),
    sa.UniqueConstraint("tenant", "name"),
    sa.UniqueConstraint("uid"),
    # the order every listing pages in (keyset ``after=(created_at, name)``): a page is a range of
    # this index, unsorted; with ``uid`` a page of keys is read from the index alone (on SQLite the
    # row holds the spec, up to 1 MiB, before created_at)
    sa.Index(None, "tenant", "created_at", "name", "uid"),
    sqlite_autoincrement=True,
)

trials = sa.Table(
    "trials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "number", sa.BigInteger, nullable=False
    ),  # the trial id users see: 1, 2, ... per study
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("state", String(16), nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),  # {name: {"value": v, "sem": s|null}}
    sa.Column("origin", String(32), nullable=False),
    sa.Column("reason", Text, nullable=False),
    sa.Column("rationale", Text, nullable=False),
    sa.Column("worker_id", String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    # studies with a fidelity: the budget to run to / measured at, the Hyperband bracket, and for a
    # continued (promoted) trial the budget it had reached (see bbo.pruning)
    sa.Column("budget", sa.Float, nullable=True),
    sa.Column("bracket", sa.Integer, nullable=True),
    sa.Column("resume_budget", sa.Float, nullable=True),
    sa.UniqueConstraint("study_id", "number"),
    sa.Index(None, "study_id", "state"),
    sqlite_autoincrement=True,
)

trial_events = sa.Table(
    "trial_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "trial_id",
        sa.Integer,
        sa.ForeignKey("trials.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("state", String(16), nullable=False),
    sa.Column("detail", Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

intermediate_values = sa.Table(
    "intermediate_values",
    metadata,
    sa.Column(
        "trial_id", sa.Integer, sa.ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("budget", sa.Float, nullable=True),  # the budget the value was measured at (fidelity)
    # the values stored since a time: a replica's catch-up read before a pruning decision
    sa.Index(None, "at"),
)

llm_calls = sa.Table(
    "llm_calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "study_id",
        sa.Integer,
        sa.ForeignKey("studies.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("purpose", String(64), nullable=False),
    sa.Column("model", String(MODEL_CHARS), nullable=False),
    sa.Column("prompt", Text, nullable=False),
    sa.Column("response", Text, nullable=False),
    sa.Column("outcome", Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency_seconds", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("number", sa.BigInteger, nullable=False),  # 1, 2, ... per study (page tokens)
    sa.UniqueConstraint("study_id", "number"),
    sqlite_autoincrement=True,
)

request_log = sa.Table(
    "request_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("kind", String(32), nullable=False),
    sa.Column("request_id", String(128), nullable=False),
    sa.Column("request_hash", String(64), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("study_id", "kind", "request_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_id", String(32), nullable=False),  # public identifier (shown by `bbo keys list`)
    sa.Column("tenant", String(128), nullable=False),
    sa.Column("key_hash", String(64), nullable=False),  # sha256 hex of the whole secret key
    sa.Column("label", String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.UniqueConstraint("key_id"),
    sa.UniqueConstraint("key_hash"),
    sa.Index(None, "tenant"),
)

model_state = sa.Table(
    "model_state",
    metadata,
    # the generation strategy's fitted surrogate state, shared by server replicas (bbo.storage.coordination)
    sa.Column(
        "study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("n_fit", sa.BigInteger, nullable=False),  # data size the hyperparameters were fit at
    sa.Column("format", sa.Integer, nullable=False),
    sa.Column(
        "state", sa.LargeBinary, nullable=False
    ),  # torch.save of {"hyper": {name: tensor}, ...}
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", String(128), nullable=False),  # replica (application name) that fit it
)
