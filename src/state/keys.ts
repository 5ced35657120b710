// The key space of the replicated map and who may write where. A key outside this grammar is refused, so
// a hostile or newer peer cannot grow the map with keys nobody reads.
import { isIPv4, isIPv6 } from 'node:net'

export const MAX_KEY_BYTES = 256

// Ed25519 peer ids in their canonical base58btc form only: one spelling per peer, so no two keys alias.
const PEER = /^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/
// DNS-label names: they become host names and service names later.
const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const CONTAINER = /^[a-z0-9][a-z0-9_.-]{0,62}$/
// The OCI tag grammar.
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/

export type ParsedKey =
  | { kind: 'node'; peer: string }
  | { kind: 'status'; peer: string; container: string }
  | { kind: 'label'; peer: string }
  | { kind: 'workload'; name: string }
  | { kind: 'service'; name: string }
  | { kind: 'tag'; name: string; tag: string }
  | { kind: 'subnet'; cidr: string }

export type KeyKind = ParsedKey['kind']

export function isPeerId(s: string): boolean {
  return PEER.test(s)
}

function isCidr(s: string): boolean {
  const slash = s.indexOf('/')
  if (slash < 0 || s.indexOf('/', slash + 1) >= 0) return false
  const ip = s.slice(0, slash)
  const bits = s.slice(slash + 1)
  if (!/^(0|[1-9][0-9]{0,2})$/.test(bits)) return false
  const max = isIPv4(ip) ? 32 : isIPv6(ip) ? 128 : -1
  return max >= 0 && Number(bits) <= max && ip === ip.toLowerCase()
}

/** The parts of a key, or undefined for a key outside the key space. */
export function parseKey(key: string): ParsedKey | undefined {
  const slash = key.indexOf('/')
  if (slash < 0) return undefined
  const prefix = key.slice(0, slash)
  const rest = key.slice(slash + 1)
  switch (prefix) {
    case 'node':
      return PEER.test(rest) ? { kind: 'node', peer: rest } : undefined
    case 'label':
      return PEER.test(rest) ? { kind: 'label', peer: rest } : undefined
    case 'status': {
      const [peer = '', container = '', ...more] = rest.split('/')
      return more.length === 0 && PEER.test(peer) && CONTAINER.test(container)
        ? { kind: 'status', peer, container }
        : undefined
    }
    case 'workload':
      return NAME.test(rest) ? { kind: 'workload', name: rest } : undefined
    case 'service':
      return NAME.test(rest) ? { kind: 'service', name: rest } : undefined
    case 'tag': {
      const colon = rest.indexOf(':')
      const name = rest.slice(0, colon)
      const tag = rest.slice(colon + 1)
      return colon > 0 && NAME.test(name) && TAG.test(tag) ? { kind: 'tag', name, tag } : undefined
    }
    case 'subnet':
      return isCidr(rest) ? { kind: 'subnet', cidr: rest } : undefined
    default:
      return undefined
  }
}

/** The only peer allowed to write this key, or undefined when any member may. */
export function ownerOf(parsed: ParsedKey): string | undefined {
  return parsed.kind === 'node' || parsed.kind === 'status' ? parsed.peer : undefined
}

/**
 * Whether `author` may write `key` (false for keys outside the key space). Any member may delete another
 * node's `node/` and `status/` records: that is `km1s forget` for a node that is gone for good. A live
 * node rewrites its own records when it sees them deleted, so forgetting a live node does not stick.
 */
export function mayWrite(key: string, author: string, deleted = false): boolean {
  const parsed = parseKey(key)
  if (!parsed) return false
  const owner = ownerOf(parsed)
  return owner === undefined || owner === author || deleted
}
