import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  type PlacementInput,
  type PlacementNode,
  type PlacementWorkload,
  place,
} from '../../../src/scheduler/place.ts'
import { chooseUpdate } from '../../../src/scheduler/rolling.ts'

const GiB = 1024 ** 3
const MiB = 1024 ** 2

const arbNode = (i: number): fc.Arbitrary<PlacementNode> =>
  fc.record({
    id: fc.constant(`12D3KooW${String(i).padStart(4, '0')}`),
    name: fc.constant(`n${i}`),
    arch: fc.constantFrom('amd64', 'arm64'),
    cpus: fc.integer({ min: 1, max: 4 }),
    memory: fc.constantFrom(GiB / 2, GiB, 2 * GiB),
    labels: fc.constantFrom<Record<string, string>>({}, { disk: 'ssd' }),
  })

const arbNodes = fc
  .integer({ min: 1, max: 12 })
  .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => arbNode(i))))
  .map((ns) => ns as PlacementNode[])

const arbWorkload = (i: number): fc.Arbitrary<PlacementWorkload> =>
  fc.record({
    name: fc.constant(`w${i}`),
    replicas: fc.integer({ min: 0, max: 8 }),
    cpu: fc.constantFrom(0, 100, 500, 1500),
    memory: fc.constantFrom(16 * MiB, 128 * MiB, 400 * MiB),
    arches: fc.constantFrom<string[] | null>(null, ['amd64'], ['arm64'], ['amd64', 'arm64']),
    labels: fc.constantFrom<Record<string, string>>({}, {}, { disk: 'ssd' }),
    exclusive: fc.boolean(),
  })

const arbWorkloads = fc
  .integer({ min: 0, max: 6 })
  .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => arbWorkload(i))))
  .map((ws) => ws as PlacementWorkload[])

const arbInput: fc.Arbitrary<PlacementInput> = fc
  .tuple(arbWorkloads, arbNodes, fc.integer({ min: 0, max: 6 }))
  .map(([workloads, nodes, extra]) => ({ workloads, nodes, knownNodes: nodes.length + extra }))

const entries = (m: Map<string, string>) => [...m].sort((a, b) => (a[0] < b[0] ? -1 : 1))

describe('place', () => {
  it('is deterministic: the same view in any order gives the same assignments', () => {
    fc.assert(
      fc.property(arbInput, fc.infiniteStream(fc.integer()), (input, seeds) => {
        const shuffle = <T>(xs: readonly T[]) =>
          xs
            .map((x) => ({ x, k: seeds.next().value as number }))
            .sort((a, b) => a.k - b.k)
            .map((p) => p.x)
        const a = place(input)
        const b = place({ ...input, workloads: shuffle(input.workloads), nodes: shuffle(input.nodes) })
        assert.deepEqual(entries(a.assignments), entries(b.assignments))
        assert.deepEqual(a.unplaced, b.unplaced)
      }),
      { numRuns: 300 },
    )
  })

  it('never puts more on a node than its CPUs and memory, nor on a node the filters exclude', () => {
    fc.assert(
      fc.property(arbInput, (input) => {
        const { assignments } = place(input)
        const byName = new Map(input.workloads.map((w) => [w.name, w]))
        const nodes = new Map(input.nodes.map((n) => [n.id, n]))
        const used = new Map<string, { cpu: number; memory: number }>()
        for (const [container, id] of assignments) {
          const w = byName.get(container.replace(/-\d+$/, '')) as PlacementWorkload
          const n = nodes.get(id) as PlacementNode
          const u = used.get(id) ?? { cpu: 0, memory: 0 }
          u.cpu += w.cpu
          u.memory += w.memory
          used.set(id, u)
          if (w.arches) assert.ok(w.arches.includes(n.arch), `${container} on ${n.arch}`)
          for (const [k, v] of Object.entries(w.labels)) assert.equal(n.labels[k], v)
        }
        for (const [id, u] of used) {
          const n = nodes.get(id) as PlacementNode
          assert.ok(u.cpu <= n.cpus * 1000, `cpu over on ${id}`)
          assert.ok(u.memory <= n.memory, `memory over on ${id}`)
        }
      }),
      { numRuns: 500 },
    )
  })

  it('never places more replicas than asked; exclusive ones only with a majority', () => {
    fc.assert(
      fc.property(arbInput, (input) => {
        const { assignments, unplaced } = place(input)
        const majority = input.nodes.length * 2 > input.knownNodes
        for (const w of input.workloads) {
          const mine = [...assignments.keys()].filter((c) => c.replace(/-\d+$/, '') === w.name)
          assert.ok(mine.length <= w.replicas)
          for (const c of mine) assert.ok(Number(c.slice(w.name.length + 1)) < w.replicas)
          if (w.exclusive && !majority) assert.equal(mine.length, 0)
          // Every replica is accounted for: placed, or unplaced with a reason.
          const missing = unplaced.filter((u) => u.workload === w.name)
          assert.equal(mine.length + missing.length, w.replicas)
        }
      }),
      { numRuns: 500 },
    )
  })

  it('spreads replicas over nodes while there are enough matching nodes with room', () => {
    fc.assert(
      fc.property(arbNodes, fc.integer({ min: 1, max: 12 }), (nodes, replicas) => {
        const w = { name: 'web', replicas, cpu: 0, memory: MiB, arches: null, labels: {}, exclusive: false }
        const { assignments } = place({ workloads: [w], nodes, knownNodes: nodes.length })
        const per = new Map<string, number>()
        for (const id of assignments.values()) per.set(id, (per.get(id) ?? 0) + 1)
        assert.equal(assignments.size, replicas)
        // No node holds more than its share; with no more replicas than nodes, each on its own node.
        assert.ok(Math.max(...per.values()) <= Math.ceil(replicas / nodes.length))
      }),
    )
  })

  it('moves few replicas when a node leaves or joins (reported)', (t) => {
    let leaveMoves = 0
    let leaveMinimum = 0
    let joinMoves = 0
    let joinTotal = 0
    let runs = 0
    fc.assert(
      fc.property(arbInput, fc.nat(), (input, pick) => {
        if (input.nodes.length < 2) return
        runs++
        const gone = input.nodes[pick % input.nodes.length] as PlacementNode
        const before = place(input).assignments
        const rest = input.nodes.filter((n) => n !== gone)
        const after = place({ ...input, nodes: rest }).assignments
        // A node leaving: its own replicas must move; every other move is a knock-on.
        for (const [c, id] of before) {
          if (id === gone.id) leaveMinimum++
          else if (after.has(c) && after.get(c) !== id) leaveMoves++
        }
        // The same node joining again.
        for (const [c, id] of after) {
          joinTotal++
          if (before.get(c) !== id) joinMoves++
        }
      }),
      { numRuns: 400 },
    )
    t.diagnostic(
      `node leaves: ${leaveMinimum} replicas had to move, ${leaveMoves} others moved; node joins: ${joinMoves} of ${joinTotal} moved (${runs} views)`,
    )
    // Knock-ons (spread and capacity) stay well below the replicas that must move.
    assert.ok(leaveMoves <= leaveMinimum, `${leaveMoves} knock-on moves for ${leaveMinimum} forced ones`)
  })

  it('moves few other replicas than those a leaving node held, without capacity pressure (reported)', (t) => {
    let forcedTotal = 0
    let knockOnTotal = 0
    let worst = 0
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 12 }),
        fc.integer({ min: 1, max: 20 }),
        fc.nat(),
        (n, replicas, pick) => {
          const nodes = Array.from({ length: n }, (_, i) => ({
            id: `p${i}`,
            name: `n${i}`,
            arch: 'amd64',
            cpus: 4,
            memory: 8 * GiB,
            labels: {},
          }))
          const w = { name: 'web', replicas, cpu: 0, memory: MiB, arches: null, labels: {}, exclusive: false }
          const before = place({ workloads: [w], nodes, knownNodes: n }).assignments
          const gone = nodes[pick % n] as PlacementNode
          const after = place({
            workloads: [w],
            nodes: nodes.filter((x) => x !== gone),
            knownNodes: n,
          }).assignments
          let knockOn = 0
          for (const [c, id] of before) if (id !== gone.id && after.get(c) !== id) knockOn++
          const forced = [...before.values()].filter((id) => id === gone.id).length
          forcedTotal += forced
          knockOnTotal += knockOn
          worst = Math.max(worst, knockOn - forced)
          // A displacement chain is short: never more than a few replicas beyond those forced off.
          assert.ok(knockOn <= forced + 3, `${knockOn} knock-ons for ${forced} forced`)
        },
      ),
      { numRuns: 1000 },
    )
    t.diagnostic(
      `one workload, 2-12 nodes, 1-20 replicas: ${forcedTotal} forced moves, ${knockOnTotal} knock-ons`,
    )
    assert.ok(knockOnTotal * 2 <= forcedTotal, 'knock-ons stay under half the forced moves')
    void worst
  })
})

describe('rolling update turns', () => {
  const r = (index: number, spec: string | null, available = true) => ({ index, spec, available })
  it('replaces one replica at a time, the lowest outdated one, only while the others are available', () => {
    assert.equal(chooseUpdate([r(0, 'new'), r(1, 'new')], 'new'), undefined)
    assert.equal(chooseUpdate([r(0, 'old'), r(1, 'old'), r(2, 'old')], 'new'), 0)
    assert.equal(chooseUpdate([r(0, 'new', false), r(1, 'old'), r(2, 'old')], 'new'), undefined)
    assert.equal(chooseUpdate([r(0, 'new'), r(1, 'old'), r(2, 'old')], 'new'), 1)
    assert.equal(chooseUpdate([r(0, 'old'), r(1, 'old'), r(2, 'old', false)], 'new'), 2)
    assert.equal(chooseUpdate([r(0, 'old'), r(1, null, false)], 'new'), undefined)
  })

  it('lets at most one replica be unavailable through an update (simulated to the end)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), (n) => {
        const reps = Array.from({ length: n }, (_, i) => r(i, 'old'))
        for (let step = 0; step < 2 * n + 2; step++) {
          const turn = chooseUpdate(reps, 'new')
          const down = reps.find((x) => !x.available)
          if (down) {
            // The replaced replica comes up with the new version before anything else moves.
            assert.equal(turn, undefined)
            down.available = true
            continue
          }
          if (turn === undefined) break
          reps[turn] = r(turn, 'new', false)
          assert.ok(reps.filter((x) => !x.available).length <= 1)
        }
        assert.ok(reps.every((x) => x.spec === 'new' && x.available))
      }),
    )
  })
})
