"""The endpoint-dns and endpoint-tcp checks: does the endpoint resolve, and does it connect."""

from __future__ import annotations

import re
from typing import Any

from .findings import Finding, Status
from .run import Run

_RDS_HOST = re.compile(r"\.proxy-[a-z0-9]+\.([a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d)\.rds\.")


def check_endpoint_dns(run: Run) -> Finding:
    dns = run.dns
    evidence: dict[str, Any] = {"host": run.host, "elapsedMs": dns.elapsed_ms}
    if dns.error is not None:
        evidence["error"] = dns.error
        return Finding(
            "endpoint-dns",
            Status.FAIL,
            f"{run.host} does not resolve: {dns.error}",
            "DNSFailure",
            evidence,
            "Check the endpoint (aws rds describe-db-proxies --query "
            "'DBProxies[].Endpoint'). An RDS Proxy endpoint resolves only inside its VPC: "
            "run rdsgate in that VPC (or a peered one with DNS resolution across the "
            "peering), with the VPC's enableDnsSupport and enableDnsHostnames on.",
        )
    evidence["addresses"] = dns.addresses
    m = _RDS_HOST.search(run.host)
    if m and m.group(1) != run.aws.region:
        evidence["endpointRegion"] = m.group(1)
        return Finding(
            "endpoint-dns",
            Status.WARN,
            f"{run.host} is in {m.group(1)} but aws.region is {run.aws.region}: IAM auth "
            "tokens are signed for the configured region and RDS Proxy will refuse them",
            "RegionMismatch",
            evidence,
            f"Set aws.region (spec.aws.region) to {m.group(1)}.",
        )
    return Finding(
        "endpoint-dns",
        Status.PASS,
        f"{run.host} resolves to {', '.join(dns.addresses)} in {dns.elapsed_ms:.0f} ms",
        "Resolved",
        evidence,
    )


def check_endpoint_tcp(run: Run) -> Finding:
    if not run.dns.addresses:
        return Finding(
            "endpoint-tcp",
            Status.SKIP,
            f"{run.host} did not resolve (see endpoint-dns)",
            "NotResolved",
        )
    tcp = run.tcp
    evidence: dict[str, Any] = {
        "port": run.port,
        "timeoutSeconds": run.upstream.connect_timeout,
        "attempts": tcp.attempts,
    }
    where = f"{run.host}:{run.port}"
    if tcp.address is not None:
        ms = tcp.attempts[-1].get("elapsedMs", 0)
        return Finding(
            "endpoint-tcp",
            Status.PASS,
            f"connected to {where} ({tcp.address}) in {ms:.0f} ms",
            "Connected",
            evidence,
        )
    nc = f"nc -zv {run.host} {run.port}"
    if tcp.kind == "timeout":
        return Finding(
            "endpoint-tcp",
            Status.FAIL,
            f"TCP connect to {where} timed out after {run.upstream.connect_timeout:g}s: "
            "packets are dropped on the way (security group or routing)",
            "ConnectTimeout",
            evidence,
            f"Allow inbound TCP {run.port} on the RDS Proxy's security group from the "
            "security group of the nodes (or of the pods, with security groups for pods). "
            "The proxy must be in the cluster's VPC, or routed to it (VPC peering or a "
            "transit gateway, with routes both ways and DNS resolution across the peering). "
            f"Test from a pod: {nc}",
        )
    if tcp.kind == "refused":
        return Finding(
            "endpoint-tcp",
            Status.FAIL,
            f"{where} refused the connection: nothing listens on port {run.port} there",
            "ConnectionRefused",
            evidence,
            "Check the endpoint's port (RDS Proxy for PostgreSQL listens on 5432) and that "
            f"the host is the RDS Proxy endpoint. Test from a pod: {nc}",
        )
    return Finding(
        "endpoint-tcp",
        Status.FAIL,
        f"no route to {where}: {tcp.attempts[-1]['error'] if tcp.attempts else 'unknown'}",
        "NoRoute",
        evidence,
        "Check the VPC route tables between the cluster's subnets and the proxy's, and "
        f"network policies in the cluster. Test from a pod: {nc}",
    )
