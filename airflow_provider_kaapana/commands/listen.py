"""``kaapana listen``: run the DICOM listener (storage SCP + landing zone + DAG trigger)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import TYPE_CHECKING

from airflow_provider_kaapana.exceptions import KaapanaError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.listener.server import IntakeDeidentification

NAME = "listen"
HELP = "receive DICOM by C-STORE into a landing zone and trigger a DAG run per completed series"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="DIMSE port to listen on (0: any free port)")
    parser.add_argument("--ae-title", default="KAAPANA", help="our (called) AE title (default KAAPANA)")
    parser.add_argument("--landing", required=True, help="landing zone directory")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default all)")
    parser.add_argument(
        "--quiet-seconds", type=float, default=20.0, help="a series is complete after S s without instances"
    )
    parser.add_argument(
        "--allow-calling", nargs="+", default=[], metavar="AET", help="accept only these calling AE titles"
    )
    parser.add_argument(
        "--min-free-mb", type=float, default=1024.0, help="refuse associations below this free disk space"
    )
    parser.add_argument("--max-pdu", type=int, default=0, help="maximum receive PDU size (0: unlimited)")
    parser.add_argument(
        "--max-associations", type=int, default=10, help="associations negotiated or established at once"
    )
    parser.add_argument(
        "--max-connections", type=int, default=100, help="open TCP connections in all (default 100)"
    )
    parser.add_argument(
        "--max-connections-per-peer",
        type=int,
        default=20,
        help="open TCP connections from one address (default 20)",
    )
    parser.add_argument(
        "--acse-timeout",
        type=float,
        default=10.0,
        help="ARTIM: close a connection without an association request after S s (default 10)",
    )
    parser.add_argument(
        "--network-timeout",
        type=float,
        default=60.0,
        help="abort an established association idle for S s (default 60)",
    )
    parser.add_argument(
        "--dimse-timeout",
        type=float,
        default=10.0,
        help="answer a C-STORE whose data set does not start within S s with a failure (default 10)",
    )
    parser.add_argument(
        "--tls-handshake-timeout",
        type=float,
        default=10.0,
        help="a TLS client must finish its handshake within S s (default 10)",
    )
    parser.add_argument(
        "--max-inflated-mb",
        type=float,
        default=256.0,
        help="refuse a deflated dataset that inflates past this size (default 256)",
    )
    parser.add_argument("--no-fsync", action="store_true", help="do not fsync before answering (unsafe)")
    parser.add_argument(
        "--stow-port",
        type=int,
        default=None,
        help="also accept DICOMweb STOW-RS (POST /studies) on this port (0: any free port); TLS with --tls-cert",
    )
    parser.add_argument(
        "--stow-token-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the accepted STOW-RS bearer tokens, comma-separated "
        "(never on the command line); without it STOW-RS needs no authentication",
    )
    deid = parser.add_argument_group(
        "de-identification on intake",
        "instances of an association that matches a route are de-identified (PS3.15 basic profile + the "
        "route's options) before anything is written: their originals never reach the landing zone; "
        "associations that match no route are stored as received",
    )
    deid.add_argument(
        "--deid-route",
        action="append",
        default=[],
        metavar="CALLED_AE[:CALLING_AE]=OPTION[,OPTION...]",
        help="an intake route (repeatable; the first match wins; * for any AE title; no OPTION: the basic "
        "profile alone), e.g. RESEARCH=retain-longitudinal-modified-dates or STUDY2:CT01=",
    )
    deid.add_argument(
        "--deid-key-conn",
        default=None,
        metavar="CONN_ID",
        help="Airflow connection whose password (or extra 'key') is the site key, resolved by Airflow's "
        "secrets backends (AIRFLOW_CONN_<CONN_ID>, [secrets] backend); needs Airflow installed",
    )
    deid.add_argument(
        "--deid-key-file",
        default=None,
        help="file holding the site key: for development only (production: --deid-key-conn)",
    )
    deid.add_argument(
        "--deid-safe-private",
        default=None,
        metavar="FILE",
        help="JSON list of the private attributes routes with retain-safe-private keep "
        "(default: PS3.15 Table E.3.10-1); refused when no route has that option",
    )
    deid.add_argument(
        "--deid-option",
        action="append",
        default=[],
        metavar="NAME",
        help="older form of one route: a Table E.1-1 option (repeatable), for --deid-called-ae",
    )
    deid.add_argument(
        "--deid-called-ae",
        action="append",
        default=[],
        metavar="AET",
        help="older form of one route: de-identify only what is addressed to this called AE title "
        "(repeatable; default: all)",
    )
    parser.add_argument("--tls-cert", default=None, help="PEM certificate: accept DIMSE over TLS")
    parser.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    parser.add_argument("--tls-ca", default=None, help="CA bundle: require client certificates signed by it")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--airflow-url", help="Airflow base URL, e.g. http://airflow:8080")
    target.add_argument("--no-trigger", action="store_true", help="only write the landing zone and manifests")
    parser.add_argument("--dag-id", default="kaapana_ingest", help="DAG to trigger (default kaapana_ingest)")
    parser.add_argument(
        "--max-series-per-run",
        type=int,
        default=32,
        help="series that complete together are announced in one DAG run, at most this many (default 32; "
        "1: one run per series batch)",
    )
    parser.add_argument(
        "--max-instances-per-run",
        type=int,
        default=4096,
        help="and at most this many instances in one run (default 4096; a larger batch goes alone)",
    )
    parser.add_argument(
        "--run-linger-seconds",
        type=float,
        default=1.0,
        help="a complete series waits this long for others to join its run (default 1; not when no "
        "association is open and no other series is waiting for its quiet period)",
    )
    parser.add_argument(
        "--min-run-interval-seconds",
        type=float,
        default=10.0,
        help="a run that is not full goes at most every S s; meanwhile completed series join it (default 10)",
    )
    parser.add_argument(
        "--airflow-token-env",
        default="KAAPANA_AIRFLOW_TOKEN",
        help="environment variable holding a bearer token (default KAAPANA_AIRFLOW_TOKEN)",
    )
    parser.add_argument(
        "--airflow-user", default=None, help="user for POST /auth/token when no token is given"
    )
    parser.add_argument(
        "--airflow-password-env",
        default="KAAPANA_AIRFLOW_PASSWORD",
        help="environment variable holding that user's password (default KAAPANA_AIRFLOW_PASSWORD)",
    )


def _site_key(args: argparse.Namespace) -> bytes:
    """The site key from ``--deid-key-conn`` (Airflow's secrets backends) or ``--deid-key-file``."""
    from airflow_provider_kaapana.core.deid.pseudonyms import check_key

    if args.deid_key_conn and args.deid_key_file:
        raise ValueError("give --deid-key-conn or --deid-key-file, not both")
    if args.deid_key_conn:
        # the one helper the DicomDeidentifyOperator uses too (an allowed exception to the
        # commands-no-airflow contract: only this option needs Airflow; without Airflow it raises a
        # KaapanaError that says so)
        from airflow_provider_kaapana.hooks.deid import site_key

        return site_key(args.deid_key_conn)
    from pathlib import Path

    return check_key(Path(args.deid_key_file).read_bytes().strip())


def _intake_deidentification(args: argparse.Namespace) -> IntakeDeidentification | None:
    """The intake routes of ``--deid-route`` (or the older ``--deid-option``/``--deid-called-ae``)."""
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
    from airflow_provider_kaapana.core.deid.safe_private import read_safe_private
    from airflow_provider_kaapana.core.listener.server import IntakeDeidentification, IntakeRoute

    keyed = bool(args.deid_key_conn or args.deid_key_file)
    legacy = bool(args.deid_option or args.deid_called_ae)
    if not keyed:
        if args.deid_route or legacy or args.deid_safe_private:
            raise ValueError(
                "intake de-identification needs the site key: --deid-key-conn (or --deid-key-file)"
            )
        return None
    if args.deid_route and legacy:
        raise ValueError(
            "give --deid-route, or the older --deid-option/--deid-called-ae (one route), not both"
        )
    route_names = [
        [n.strip() for n in text.partition("=")[2].split(",") if n.strip()] for text in args.deid_route or []
    ]
    if args.deid_safe_private and not any(
        "retain-safe-private" in names for names in (route_names or [args.deid_option or []])
    ):
        # as kaapana deid --safe-private: a list no profile uses is a mistake, not silently dropped
        raise ValueError(
            f"--deid-safe-private {args.deid_safe_private} needs a route with the option retain-safe-private"
        )
    safe = read_safe_private(args.deid_safe_private) if args.deid_safe_private else frozenset()

    def safe_for(names: list[str]) -> frozenset[tuple[str, int, int]]:
        # the list applies to the routes that retain safe private attributes
        return safe if "retain-safe-private" in names else frozenset()

    if args.deid_route:
        routes = [
            IntakeRoute.parse(text, safe_private=safe_for(names))
            for text, names in zip(args.deid_route, route_names, strict=True)
        ]
        return IntakeDeidentification(_site_key(args), tuple(routes))
    profile = DeidentificationProfile.from_names(args.deid_option, safe_private=safe_for(args.deid_option))
    return IntakeDeidentification.for_called_aes(profile, _site_key(args), args.deid_called_ae)


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.listener.server import AirflowTrigger, DicomListener
    from airflow_provider_kaapana.core.net.dimse import configure_pynetdicom

    if getattr(args, "verbose", 0) < 2:
        # pynetdicom's per-message event logging costs ~0.5 ms CPU per instance even when nothing is
        # printed; this process only listens, so turn it off unless -vv asks for it
        configure_pynetdicom(log_events=False)

    trigger = None
    if args.airflow_url:
        token = os.environ.get(args.airflow_token_env) or None
        password = os.environ.get(args.airflow_password_env) or None
        if not token and not (args.airflow_user and password):
            print(
                f"kaapana listen: give a token in ${args.airflow_token_env} or --airflow-user with "
                f"${args.airflow_password_env}"
            )
            return 2
        trigger = AirflowTrigger(
            args.airflow_url, args.dag_id, token=token, username=args.airflow_user, password=password
        )
    ssl_context = None
    if args.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.tls_ca)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        ssl_context.verify_mode = ssl.CERT_REQUIRED if args.tls_ca else ssl.CERT_NONE
    try:
        deidentification = _intake_deidentification(args)
    except (OSError, ValueError, KaapanaError) as exc:
        # messages name files, connections and AE titles, never the key
        print(f"kaapana listen: {exc}")
        return 2
    if deidentification is not None:
        for route in deidentification.routes:
            log.info("intake route %s (first match wins; other associations keep their originals)", route)
    listener = DicomListener(
        args.landing,
        port=args.port,
        ae_title=args.ae_title,
        host=args.host,
        quiet_seconds=args.quiet_seconds,
        allow_calling=args.allow_calling,
        min_free_bytes=int(args.min_free_mb * 1024 * 1024),
        on_batches_complete=trigger.trigger_batches if trigger is not None else None,
        max_series_per_run=args.max_series_per_run,
        max_instances_per_run=args.max_instances_per_run,
        run_linger_seconds=args.run_linger_seconds,
        min_run_interval_seconds=args.min_run_interval_seconds,
        max_pdu=args.max_pdu,
        max_associations=args.max_associations,
        max_connections=args.max_connections,
        max_connections_per_peer=args.max_connections_per_peer,
        acse_timeout=args.acse_timeout,
        network_timeout=args.network_timeout,
        dimse_timeout=args.dimse_timeout,
        tls_handshake_timeout=args.tls_handshake_timeout,
        max_inflated_bytes=int(args.max_inflated_mb * 1024 * 1024),
        fsync=not args.no_fsync,
        ssl_context=ssl_context,
        deidentification=deidentification,
        stow_port=args.stow_port,
        stow_tokens=[t.strip() for t in os.environ.get(args.stow_token_env or "", "").split(",") if t.strip()]
        if args.stow_token_env
        else [],
    )

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    listener.start()
    # one line on stdout so scripts and tests know where we listen
    stow = f", STOW-RS on port {listener.stow_port}" if listener.stow is not None else ""
    print(
        f"kaapana listen: {listener.ae_title} on {listener.host}:{listener.port}{stow} -> {listener.landing_dir}",
        flush=True,
    )
    try:
        listener.wait()  # until SIGINT/SIGTERM
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        listener.stop()
    return 0
