// Which /24 of the cluster range a node uses: claimed through a replicated `subnet/<cidr>` record, chosen
// deterministically, settled by a deterministic tie-break when two nodes claim one. Pure: no clock, no I/O.
import { createHash } from 'node:crypto'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { formatIPv4, parseIPv4, parseSubnet, type Subnet } from './container-net.ts'

export const DEFAULT_CLUSTER_CIDR = '10.42.0.0/16'
/** Every node gets a /24: 253 containers, and up to 256 nodes in the default range. */
export const NODE_PREFIX = 24

/** The value of a `subnet/<cidr>` record. */
export const SubnetClaimValue = z.strictObject({
  peer: z.string().check(z.regex(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)),
  /** When the node first claimed it (ms since the epoch): the earlier claim wins a conflict. */
  claimedAt: z.number().check(z.int(), z.minimum(0)),
})
export type SubnetClaimValue = z.infer<typeof SubnetClaimValue>

export interface Claim extends SubnetClaimValue {
  cidr: string
}

/** The cluster range: an IPv4 network from /16 to /24 (parseSubnet's rules). */
export function parseClusterCidr(cidr: string): Subnet {
  const s = parseSubnet(cidr)
  if (s.prefix > NODE_PREFIX) {
    throw new Km1sError(
      'ERR_INVALID_SUBNET',
      `The cluster range ${cidr} is smaller than one node subnet; use a /${NODE_PREFIX} or larger, e.g. ${DEFAULT_CLUSTER_CIDR}.`,
    )
  }
  return s
}

/** The node subnets of the cluster range, in order. */
export function nodeSubnetCount(cluster: Subnet): number {
  return 2 ** (NODE_PREFIX - cluster.prefix)
}

export function nodeSubnetAt(cluster: Subnet, index: number): string {
  return `${formatIPv4(cluster.base + index * 2 ** (32 - NODE_PREFIX))}/${NODE_PREFIX}`
}

/** Whether `cidr` is one of the cluster's node subnets. */
export function isNodeSubnet(cluster: Subnet, cidr: string): boolean {
  const [addr = '', prefix] = cidr.split('/')
  const n = parseIPv4(addr)
  return (
    n !== undefined &&
    prefix === String(NODE_PREFIX) &&
    n % 2 ** (32 - NODE_PREFIX) === 0 &&
    n >= cluster.base &&
    n < cluster.base + cluster.size
  )
}

/** True when claim `a` beats claim `b` of the same subnet: the earlier claim, then the smaller peer id. */
export function claimWins(a: SubnetClaimValue, b: SubnetClaimValue): boolean {
  if (a.claimedAt !== b.claimedAt) return a.claimedAt < b.claimedAt
  return a.peer < b.peer
}

/**
 * The first free node subnet from a position given by the peer id's hash, probing upward (and around):
 * spread, so that nodes joining at once rarely pick the same one, and the same for the same inputs.
 */
export function chooseSubnet(cluster: Subnet, peer: string, taken: ReadonlySet<string>): string {
  const count = nodeSubnetCount(cluster)
  const start = createHash('sha256').update(peer).digest().readUInt32BE(0) % count
  for (let i = 0; i < count; i++) {
    const cidr = nodeSubnetAt(cluster, (start + i) % count)
    if (!taken.has(cidr)) return cidr
  }
  throw new Km1sError(
    'ERR_NO_SUBNET',
    `Every /${NODE_PREFIX} of the cluster range ${cluster.cidr} is claimed; forget nodes that are gone (km1s forget) or start with a larger --cluster-cidr.`,
  )
}

export interface SubnetDecision {
  claim: Claim
  /** The claim changed from `mine` (a first claim, or a move after losing a conflict). */
  changed: boolean
  /** Why, for the log. */
  reason: 'kept' | 'first' | 'lost' | 'outside' | 'fixed'
}

/**
 * What this node's subnet is, given its own claim (persisted), the `subnet/` records it sees and the time.
 * Kept unless another claim of the same subnet beats it; else a new one is chosen past every taken one.
 */
export function decideSubnet(opts: {
  cluster: Subnet
  self: string
  mine: Claim | undefined
  records: readonly Claim[]
  now: number
  /** A subnet given by the operator (--subnet): always this one, never moved. */
  fixed?: string | undefined
}): SubnetDecision {
  const { cluster, self, mine, records, now } = opts
  if (opts.fixed !== undefined) {
    const cidr = parseSubnet(opts.fixed).cidr
    const claim = mine?.cidr === cidr ? mine : { cidr, peer: self, claimedAt: now }
    return { claim, changed: claim !== mine, reason: 'fixed' }
  }
  const byCidr = new Map(records.map((r) => [r.cidr, r]))
  let reason: SubnetDecision['reason'] = 'first'
  if (mine !== undefined) {
    const other = byCidr.get(mine.cidr)
    if (!isNodeSubnet(cluster, mine.cidr)) reason = 'outside'
    else if (other === undefined || other.peer === self || claimWins(mine, other))
      return { claim: mine, changed: false, reason: 'kept' }
    else reason = 'lost'
  }
  const taken = new Set(records.filter((r) => r.peer !== self).map((r) => r.cidr))
  if (mine !== undefined) taken.add(mine.cidr)
  const cidr = chooseSubnet(cluster, self, taken)
  return { claim: { cidr, peer: self, claimedAt: now }, changed: true, reason }
}

/** The claims among records (key, value) that are well formed; others are ignored. */
export function claimsOf(records: Iterable<{ key: string; value: unknown }>): Claim[] {
  const claims: Claim[] = []
  for (const r of records) {
    if (!r.key.startsWith('subnet/')) continue
    const parsed = SubnetClaimValue.safeParse(r.value)
    if (parsed.success) claims.push({ cidr: r.key.slice('subnet/'.length), ...parsed.data })
  }
  return claims
}
