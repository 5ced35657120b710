// Placement: a pure, deterministic function of (workloads, live nodes). Every node computes it over its own
// view and runs only what lands on itself; equal views give equal answers, so no leader is needed.
// Hand-written because it is the heart of km1s: rendezvous (highest random weight) hashing per replica.
import { createHash } from 'node:crypto'

export interface PlacementNode {
  /** Peer id: the identity rendezvous hashing ranks. */
  id: string
  name: string
  /** The node's architecture after the `km1s.io/arch` label override. */
  arch: string
  cpus: number
  /** Bytes. */
  memory: number
  labels: Readonly<Record<string, string>>
}

export interface PlacementWorkload {
  name: string
  replicas: number
  /** Millicores requested per replica (0 = none). */
  cpu: number
  /** Bytes requested per replica. */
  memory: number
  /** Arches it can run on (the workload's --arch, or its artifact's); null = any. */
  arches: readonly string[] | null
  /** Labels a node must carry. */
  labels: Readonly<Record<string, string>>
  exclusive: boolean
}

export interface PlacementInput {
  workloads: readonly PlacementWorkload[]
  /** The live nodes of this view. */
  nodes: readonly PlacementNode[]
  /** Every node this node knows of (alive or not): `exclusive` needs more than half of them live. */
  knownNodes: number
}

export interface Unplaced {
  workload: string
  index: number
  reason: string
}

export interface Placement {
  /** Container name (`<workload>-<index>`) → peer id of the node that runs it. */
  assignments: Map<string, string>
  unplaced: Unplaced[]
}

/** The rendezvous weight of (workload, replica, node): 48 bits of sha256, equal on every node. */
export function weight(workload: string, index: number, node: string): number {
  return createHash('sha256').update(`${workload}\0${index}\0${node}`).digest().readUIntBE(0, 6)
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

function matches(node: PlacementNode, w: PlacementWorkload): boolean {
  if (w.arches !== null && !w.arches.includes(node.arch)) return false
  for (const [k, v] of Object.entries(w.labels)) if (node.labels[k] !== v) return false
  return true
}

/**
 * Replicas are placed workload by workload (by name), index by index. Each goes to the node of highest
 * weight among those that match (arch, labels) and have room for its request, preferring nodes without a
 * replica of the same workload (spread). A node joining or leaving changes the winner only for the
 * replicas whose top choices it was (plus a few spread and capacity knock-ons, measured in the tests).
 */
export function place(input: PlacementInput): Placement {
  const nodes = [...input.nodes].sort((a, b) => byString(a.id, b.id))
  const workloads = [...input.workloads].sort((a, b) => byString(a.name, b.name))
  const freeCpu = new Map(nodes.map((n) => [n.id, n.cpus * 1000]))
  const freeMemory = new Map(nodes.map((n) => [n.id, n.memory]))
  const assignments = new Map<string, string>()
  const unplaced: Unplaced[] = []
  const majority = nodes.length * 2 > input.knownNodes
  for (const w of workloads) {
    const eligible = nodes.filter((n) => matches(n, w))
    const holding = new Set<string>()
    for (let index = 0; index < w.replicas; index++) {
      if (w.exclusive && !majority) {
        unplaced.push({
          workload: w.name,
          index,
          reason: 'exclusive: this side of the network sees no majority',
        })
        continue
      }
      if (eligible.length === 0) {
        unplaced.push({
          workload: w.name,
          index,
          reason:
            nodes.length === 0
              ? 'no live node'
              : `no live node matches${w.arches ? ` arch ${w.arches.join('|')}` : ''}${
                  Object.keys(w.labels).length
                    ? ` labels ${Object.entries(w.labels)
                        .map(([k, v]) => `${k}=${v}`)
                        .join(',')}`
                    : ''
                }`,
        })
        continue
      }
      let best: PlacementNode | undefined
      let bestWeight = -1
      let bestSpread = false
      for (const n of eligible) {
        if ((freeCpu.get(n.id) ?? 0) < w.cpu || (freeMemory.get(n.id) ?? 0) < w.memory) continue
        const spread = !holding.has(n.id)
        const wt = weight(w.name, index, n.id)
        if ((spread && !bestSpread) || (spread === bestSpread && wt > bestWeight)) {
          best = n
          bestWeight = wt
          bestSpread = spread
        }
      }
      if (!best) {
        unplaced.push({ workload: w.name, index, reason: 'no matching node has enough free CPU and memory' })
        continue
      }
      freeCpu.set(best.id, (freeCpu.get(best.id) ?? 0) - w.cpu)
      freeMemory.set(best.id, (freeMemory.get(best.id) ?? 0) - w.memory)
      holding.add(best.id)
      assignments.set(`${w.name}-${index}`, best.id)
    }
  }
  return { assignments, unplaced }
}
