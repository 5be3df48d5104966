"""Settings of the API and the worker, read from the environment.

One class for both processes so that a value (the task queue, the data directory) cannot drift
between them. Tests build their own `Settings` instead of touching the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from temporal_credentials import read_credentials
from workflows.durations import parse_duration
from workflows.ids import DEFAULT_TASK_QUEUE

# The domains VTEX serves marketplaces' services endpoints from: accounts' stores and OMS
# (`{account}.vtexcommercestable.com.br`, `.vtexcommercebeta.com.br`), their admin and apps
# (`{account}.myvtex.com`, as in the spec's example), and VTEX's internal OMS address
# (`oms.vtexinternal.com.br`).
DEFAULT_MARKETPLACE_HOSTS = (
    "*.vtexcommercestable.com.br,*.vtexcommercebeta.com.br,*.myvtex.com,"
    "*.vtexinternal.com.br,*.vtex.com.br,*.vtex.com"
)

# The warehouses this project ships, by the short names the WAREHOUSE setting takes.
WAREHOUSE_FACTORIES = {
    "simulated": "activities.simulated_warehouse:SimulatedWarehouse.from_settings",
    "http": "activities.http_warehouse:HttpWarehouse.from_settings",
}

# Where `make run` keeps the payload encryption key it made on its first start.
PAYLOAD_KEY_FILE = "payload-encryption.key"

# Where compose mounts its `secrets:`: a file named after a setting (`seller_app_token`) gives its
# value, so that secrets stay out of environment variables (`docker inspect` shows those). An
# environment variable of the same name still wins.
SECRETS_DIR = Path(os.environ.get("SECRETS_DIR", "/run/secrets"))


class Settings(BaseSettings):
    """Every knob of the service, each one an environment variable of the same name in capitals."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None
    )

    # Temporal
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    # Shown as a link on GET /pvt/orders/{orderId} when set, e.g. http://localhost:8233.
    temporal_ui_url: str = ""
    # A secured connection, built by temporal_client.py; see docs/temporal-connection.md. Each
    # credential is a file named by a *_FILE setting (e.g. a compose secret in /run/secrets): the
    # secret never sits in the environment, and a missing file stops the process, named.
    # TLS is on as soon as any of these is set. TEMPORAL_TLS=true alone: TLS, the server checked
    # against the system's CAs (Temporal Cloud). TEMPORAL_TLS=false: plain, even with an API key
    # (for a proxy on loopback that adds TLS); with a TLS file, refused.
    temporal_tls: bool | None = None
    # The CA that signed the server's certificate (PEM); unset: the system's CAs.
    temporal_tls_ca_file: Path | None = None
    # The name the server's certificate must carry, sent as the TLS SNI, when it is not the host
    # of TEMPORAL_ADDRESS.
    temporal_tls_server_name: str = ""
    # mTLS: this client's certificate (PEM; intermediates may follow it) and its unencrypted
    # private key (PEM). Both or neither.
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    # A file holding an API key alone, sent as `Authorization: Bearer <key>` (Temporal Cloud).
    temporal_api_key_file: Path | None = None

    @field_validator(
        "temporal_tls",
        "temporal_tls_ca_file",
        "temporal_tls_cert_file",
        "temporal_tls_key_file",
        "temporal_api_key_file",
        mode="before",
    )
    @classmethod
    def _temporal_empty_is_unset(cls, value: object) -> object:
        # TEMPORAL_TLS_CA_FILE= (compose's `${TEMPORAL_TLS_CA_FILE:-}`) is unset, not the
        # current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _temporal_credentials_are_sound(self) -> Settings:
        # A certificate, key or API key file that cannot work stops the process at start with
        # the setting and the file named, not later as a refused handshake.
        read_credentials(self)
        return self

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # When both are set, every /pvt call must carry them in X-VTEX-API-AppKey / X-VTEX-API-AppToken.
    # Setting one without the other is refused: authentication is never half on.
    seller_app_key: str = ""
    seller_app_token: str = ""
    # The API refuses to listen beyond loopback without credentials unless this says so.
    allow_unauthenticated: bool = False
    # How long the API waits for the worker to accept a placement, dispatch or cancellation
    # before it answers 503 (the marketplace retries; the retry joins the same Temporal update).
    update_timeout_seconds: float = Field(default=10.0, gt=0)
    # A request whose body has not all arrived within this is answered 408 and its connection
    # closed: a caller that declares more than it sends would otherwise hold it forever.
    request_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # A request whose headers are not all in within this of the connection's first byte (or of
    # the previous answer on a kept-alive connection) is answered 408 and its connection closed;
    # a connection that sends nothing is closed after it too (api/slow_clients.py). Apart from
    # the body's: headers are a few hundred bytes, a body may be a large order.
    request_headers_timeout_seconds: float = Field(default=30.0, gt=0)
    # Cancellation "Evaluate" bound: past it the API answers 200 with an empty body.
    cancel_confirm_seconds: float = Field(default=2.0, gt=0)
    # How long GET /pvt/orders/{orderId} waits for a worker to answer the order's query before it
    # answers from what Temporal keeps without one (`live: false`); each of those reads is
    # bounded by it too.
    order_query_timeout_seconds: float = Field(default=2.0, gt=0)
    # Put in the placement answer as followUpEmail when set.
    follow_up_email: str = ""

    # Ops listener: a second port of `python -m api` for what VTEX must not reach (/metrics,
    # /docs, /openapi.json, the payload codec the Temporal UI calls); see docs/ops-listener.md.
    ops_host: str = "127.0.0.1"
    ops_port: int = 8001
    # When set, every ops route but /healthz requires `Authorization: Bearer <OPS_TOKEN>` (the
    # codec's JWTs below aside). A secret: e.g. the file ops_token in SECRETS_DIR.
    ops_token: str = Field(default="", repr=False)
    # When set, the codec routes also take a JWT (the Temporal UI's OIDC access token, sent with
    # TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true) signed by a key of this JWKS, for this audience
    # (required with it) and, when set, from this issuer.
    codec_jwks_url: str = ""
    # True: the codec routes answer without a token even when OPS_TOKEN is set, so that a
    # Temporal UI without a login (which can send no token) shows orders decoded; then only where
    # the ops listener listens guards the codec (docker-compose.yml: the host's loopback). Ignored
    # when CODEC_JWKS_URL is set.
    codec_open: bool = False
    codec_jwt_audience: str = ""
    codec_jwt_issuer: str = ""
    # The browser origins (scheme://host:port, comma-separated) whose pages may call the codec
    # routes: the Temporal UI's. Empty: TEMPORAL_UI_URL's origin.
    codec_cors_origins: str = ""

    # Order workflow
    # Used when a placement has no shippingData.logisticsInfo[].lockTTL. Same format: 8d, 12h, 30m.
    default_lock_ttl: str = "8d"
    # How long an order's workflow stays open after it ends (invoiced, canceled, expired) so that
    # late calls are answered by the order itself: e.g. a cancellation of an invoiced order resends
    # the invoice. Calls after that are answered from the closed workflow's state.
    late_call_window: str = "1d"
    # How long an order retries each call to the marketplace (the invoice, its tracking, the
    # parcel's statuses, a seller's cancellation) before it shows `attention` and waits for an
    # operator's resend. Read by the API at placement: each order keeps the bound it was placed
    # with.
    marketplace_retry_for: str = "1d"

    # Outbound calls to the marketplace (invoice, tracking)
    # Hosts a placement's marketplaceServicesEndpoint may name; `*.example.com` matches its
    # subdomains. Non-public addresses only when a host is listed exactly. See
    # activities/marketplace_hosts.py.
    marketplace_allowed_hosts: str = DEFAULT_MARKETPLACE_HOSTS
    marketplace_app_key: str = ""
    marketplace_app_token: str = ""
    marketplace_timeout_seconds: float = Field(default=10.0, gt=0)

    # Change notifications (vtex-marketplace-change-notification.openapi.json): the marketplace's
    # account API, e.g. https://{accountName}.vtexcommercestable.com.br/api, and the seller id it
    # gave us. Both set: every worker relays the SKUs whose price or stock changed
    # (change_relay.py, activities/change_notifications.py); either empty: none is sent.
    change_notification_url: str = ""
    seller_id: str = ""
    # A burst of changes to one SKU within this (2s, 1m; 0s: none) becomes one notification.
    change_notification_debounce: str = "2s"

    # Where a worker serves its Prometheus metrics (the SDK's, and the orders'): host:port, or
    # empty for none. Each worker on a host needs its own port.
    worker_metrics_address: str = ""
    # How long a worker told to stop (SIGTERM) lets its running steps finish.
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # How many activities (fulfillment steps, marketplace calls) one worker runs at once; unset:
    # the SDK's default. A step waiting on slow I/O holds its slot the whole time.
    worker_max_concurrent_activities: int | None = Field(default=None, gt=0)
    # How the workflows' sandbox gets its modules. `shared`: imported once per worker and passed
    # through (the SDK's passthrough_all_modules); `fresh`: re-imported for every workflow run,
    # with datetime.now, random, I/O... refused in workflow code. `fresh` costs about 4 ms of the
    # worker's CPU per new order (a quarter of a placement's); the test suite runs `fresh`, so
    # that a non-deterministic call in workflow code fails the tests (worker.py).
    workflow_sandbox: Literal["shared", "fresh"] = "shared"

    # Customer data encrypted in Temporal: `key-id:base64-key[,older...]`; see codec.py.
    payload_encryption_key: str = Field(default="", repr=False)
    # True: the API and the workers refuse to start without PAYLOAD_ENCRYPTION_KEY, rather than
    # store customer data in Temporal in clear.
    require_payload_encryption: bool = False

    # Warehouse
    # "module:callable" returning a Warehouse, or a short name of WAREHOUSE_FACTORIES: `simulated`
    # (the default) or `http` (the seller's own system behind the warehouse HTTP API); see
    # activities/warehouse.py. Read as the factory it names: the API's catalog check and the
    # worker's log see the same name whichever way it was written.
    warehouse: str = WAREHOUSE_FACTORIES["simulated"]
    # WAREHOUSE=http (activities/http_warehouse.py): the API's base URL, e.g.
    # https://erp.example.com/vtex (calls go to {url}/orders/...), the secret both sides sign
    # requests with (a secret: e.g. the file warehouse_http_secret in SECRETS_DIR; 16 characters
    # at least), and how long one call may take before it is retried.
    warehouse_http_url: str = ""
    warehouse_http_secret: str = Field(default="", repr=False)
    warehouse_http_timeout_seconds: float = Field(default=30.0, gt=0)
    data_dir: Path = Path(".data")
    # The simulated warehouse's database, a SQLAlchemy URL: e.g.
    # postgresql+psycopg://user:password@host:5432/warehouse for workers on many hosts. Empty: a
    # SQLite file (WAREHOUSE_DB), shared by the workers of one host only.
    warehouse_url: str = Field(default="", repr=False)
    # The password of WAREHOUSE_URL's user, when the URL has none: from a secret file
    # (/run/secrets/warehouse_db_password), so that the URL itself holds no secret.
    warehouse_db_password: str = Field(default="", repr=False)
    # That SQLite file; defaults to $DATA_DIR/warehouse.db.
    warehouse_db: Path | None = None
    # Unset: a SKU the catalog (activities/catalog.py) does not list is unknown. Set (for demos
    # and black-box tests): an unseen SKU is sold, starting with this stock.
    default_stock: int | None = Field(default=None, ge=0)
    # The shipping table the fulfillment simulation answers from (api/shipping.py); default:
    # catalog/shipping.json.
    shipping_table: Path | None = None
    # What the simulated warehouse refuses for good, to try the seller's cancellation (the step
    # fails, the order is compensated, the marketplace told): SKUs found damaged at pick, and
    # postal codes (by prefix) its carrier refuses; both comma-separated.
    warehouse_damaged_skus: str = ""
    carrier_refused_postal_codes: str = ""
    # How long the simulated carrier takes from the label to the customer (e.g. 2d; 30s to watch
    # an order reach `delivered` in make run).
    carrier_delivery_time: str = "2d"
    # How often an invoiced order asks the carrier where its parcel is, until delivered; each new
    # event is posted to the marketplace (.../invoice/{invoiceNumber}/tracking). 0s: orders do not
    # follow their parcel, and end `invoiced` (a seller whose carrier tells VTEX itself).
    tracking_poll_interval: str = "1h"
    # How long each simulated step (pick, pack, ship, invoice) takes.
    fulfillment_step_seconds: float = Field(default=2.0, ge=0)

    @field_validator("warehouse")
    @classmethod
    def _warehouse_factory(cls, value: str) -> str:
        return WAREHOUSE_FACTORIES.get(value.strip(), value)

    @field_validator("default_stock", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # DEFAULT_STOCK= (as compose's `${DEFAULT_STOCK:-}` writes it) means unset, not an error.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "default_lock_ttl",
        "late_call_window",
        "marketplace_retry_for",
        "change_notification_debounce",
        "carrier_delivery_time",
        "tracking_poll_interval",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _credentials_are_whole(self) -> Settings:
        if bool(self.seller_app_key) != bool(self.seller_app_token):
            missing = "SELLER_APP_TOKEN" if self.seller_app_key else "SELLER_APP_KEY"
            present = "SELLER_APP_KEY" if self.seller_app_key else "SELLER_APP_TOKEN"
            raise ValueError(
                f"{present} is set but {missing} is not: set both to require VTEX's credentials, "
                "or neither"
            )
        return self

    @property
    def encryption_key(self) -> str:
        """PAYLOAD_ENCRYPTION_KEY, or the key `make run` keeps in $DATA_DIR, or "" (no
        encryption): every process of one deployment must use the same."""
        if self.payload_encryption_key:
            return self.payload_encryption_key
        key_file = self.data_dir / PAYLOAD_KEY_FILE
        return key_file.read_text().strip() if key_file.exists() else ""

    @property
    def codec_origins(self) -> list[str]:
        """CODEC_CORS_ORIGINS, or TEMPORAL_UI_URL's origin, each as `scheme://host[:port]`."""
        listed = self.codec_cors_origins or self.temporal_ui_url
        origins = []
        for url in (part.strip() for part in listed.split(",")):
            parts = urlsplit(url)
            if parts.scheme and parts.netloc:
                origins.append(f"{parts.scheme}://{parts.netloc}".lower())
        return origins

    @property
    def warehouse_store(self) -> str | Path:
        """The simulated warehouse's database: WAREHOUSE_URL, or else its SQLite file."""
        if self.warehouse_url and self.warehouse_db_password:
            url = make_url(self.warehouse_url)
            if url.password is None:
                return url.set(password=self.warehouse_db_password).render_as_string(
                    hide_password=False
                )
        return self.warehouse_url or self.warehouse_db or self.data_dir / "warehouse.db"

    @property
    def shipping_table_path(self) -> Path:
        """SHIPPING_TABLE, or the sample table in catalog/."""
        return self.shipping_table or Path(__file__).resolve().parent / "catalog" / "shipping.json"

    @property
    def carrier_delivery_seconds(self) -> float:
        """CARRIER_DELIVERY_TIME in seconds."""
        return parse_duration(self.carrier_delivery_time).total_seconds()

    @property
    def change_notifications_enabled(self) -> bool:
        """Whether workers notify the marketplace of price and stock changes."""
        return bool(self.change_notification_url and self.seller_id)

    @property
    def change_notification_debounce_seconds(self) -> float:
        """CHANGE_NOTIFICATION_DEBOUNCE in seconds."""
        return parse_duration(self.change_notification_debounce).total_seconds()

    @property
    def seller_auth_enabled(self) -> bool:
        """Whether inbound calls must carry the seller's app key and token."""
        return bool(self.seller_app_key and self.seller_app_token)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
