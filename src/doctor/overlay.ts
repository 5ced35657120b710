// The overlay lines of `km1s doctor`: when an agent answers on the socket, one check for the node network
// and one per peer (endpoint, last handshake, bytes). Pure: the status in, checks out.
import type { NetworkView } from '../api/schemas.ts'
import type { DoctorCheck } from './types.ts'

/** WireGuard re-handshakes every 2 minutes while traffic flows, and keepalives keep it flowing. */
export const HANDSHAKE_STALE_MS = 180_000

function bytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(1)} ${units[i]}`
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`
}

export function overlayChecks(network: NetworkView | undefined, now: number): DoctorCheck[] {
  if (network === undefined) {
    return [
      {
        id: 'overlay',
        name: 'overlay',
        level: 'warn',
        detail: 'the agent runs no node network (runtime none or process, or --no-network)',
        fix: 'start the agent as root with the oci runtime to connect containers across nodes',
      },
    ]
  }
  const head: DoctorCheck = {
    id: 'overlay',
    name: 'overlay',
    level: network.lastError === null ? 'ok' : 'fail',
    detail: `${network.subnet} on ${network.bridge}, ${network.kind ?? 'no'} WireGuard ${network.interface} port ${network.listenPort}${network.restarts > 0 ? `, ${network.restarts} restarts` : ''}${network.lastError ? `: ${network.lastError}` : ''}`,
    ...(network.lastError ? { fix: 'see the agent log; km1s doctor above says what the host lacks' } : {}),
  }
  const peers = network.peers.map((p): DoctorCheck => {
    const fresh = p.latestHandshake !== null && now - p.latestHandshake < HANDSHAKE_STALE_MS
    const handshake =
      p.latestHandshake === null ? 'no handshake yet' : `handshake ${ago(now - p.latestHandshake)}`
    return {
      id: `overlay-${p.name}`,
      name: `overlay ${p.name}`,
      level: fresh ? 'ok' : 'warn',
      detail: `${p.subnet ?? 'no subnet'} via ${p.endpoint ?? 'no endpoint'}, ${handshake}, rx ${bytes(p.rxBytes)}, tx ${bytes(p.txBytes)} (${p.state})`,
      ...(fresh
        ? {}
        : {
            fix: `check that ${p.name} is up and that UDP port ${network.listenPort} is open between the nodes`,
          }),
    }
  })
  return [head, ...peers]
}
