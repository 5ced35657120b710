import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { isLocalArtifact, workloadFromFlags } from '../../../src/cli/workload-flags.ts'
import { ContainerSpec } from '../../../src/runtime/types.ts'
import { parseManifests, workloadsToYaml } from '../../../src/scheduler/manifest.ts'
import {
  containerSpecOf,
  normalizeWorkload,
  parseCpu,
  parseMemory,
  parseReplicaName,
  specHash,
  toManifest,
  WorkloadValue,
} from '../../../src/scheduler/workload.ts'

const flags = {
  label: [] as string[],
  port: [] as string[],
  env: [] as string[],
}

function errorOf(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    return (err as Error).message
  }
  assert.fail('expected an error')
}

describe('workload spec', () => {
  it('turns run flags into the stored form with defaults and units', () => {
    const w = workloadFromFlags('web', ['/usr/bin/python3', '-m', 'http.server', '8080'], {
      ...flags,
      replicas: 3,
      cpu: '250m',
      memory: '64Mi',
      label: ['disk=ssd'],
      port: ['8080'],
      env: ['A=1', 'B=x=y'],
      service: 'web',
      restart: 'on-failure',
      exclusive: true,
    })
    assert.deepEqual(w, {
      name: 'web',
      artifact: null,
      command: ['/usr/bin/python3', '-m', 'http.server', '8080'],
      replicas: 3,
      cpu: 250,
      memory: 64 * 1024 * 1024,
      arch: null,
      labels: { disk: 'ssd' },
      ports: [8080],
      service: 'web',
      restart: 'on-failure',
      env: { A: '1', B: 'x=y' },
      exclusive: true,
      stopped: false,
    })
    assert.ok(WorkloadValue.safeParse(w).success)
    const d = normalizeWorkload({ name: 'x', command: ['/bin/true'] })
    assert.equal(d.replicas, 1)
    assert.equal(d.memory, 128 * 1024 * 1024)
    assert.equal(d.restart, 'always')
  })

  it('names the field and what is allowed in every validation error', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ name: 'Web', command: ['x'] }, /^Invalid workload: name must be lowercase letters/],
      [{ name: 'web', command: [] }, /command must name the program/],
      [{ name: 'web' }, /command/],
      [{ name: 'web', command: ['x'], replicas: -1 }, /replicas must be 0 to 256/],
      [{ name: 'web', command: ['x'], replicas: 1.5 }, /replicas must be a whole number/],
      [{ name: 'web', command: ['x'], restart: 'sometimes' }, /restart must be always, on-failure or never/],
      [{ name: 'web', command: ['x'], cpu: 'lots' }, /cpu must be cores \(0\.5\) or millicores \(500m\)/],
      [{ name: 'web', command: ['x'], memory: '1Mi' }, /memory must be at least 4Mi/],
      [{ name: 'web', command: ['x'], memory: 'big' }, /memory must be bytes or a size/],
      [{ name: 'web', command: ['x'], ports: [70000] }, /ports\.0 must be 1 to 65535/],
      [{ name: 'web', command: ['x'], replica: 2 }, /replica is not a workload field \(allowed: name/],
      [{ name: 'web', command: ['x'], arch: 'ARM 64' }, /arch must be an architecture name/],
    ]
    for (const [input, want] of cases) {
      const msg = errorOf(() => normalizeWorkload(input))
      assert.match(msg, want, JSON.stringify(input))
      assert.ok(msg.endsWith('.'), msg)
      assert.equal(msg.split('\n').length, 1)
    }
    assert.match(
      errorOf(() => workloadFromFlags('web', ['x'], { ...flags, label: ['nolabel'] })),
      /--label/,
    )
    assert.ok(isLocalArtifact('./hello') && isLocalArtifact('/opt/hello') && isLocalArtifact('..'))
    assert.ok(!isLocalArtifact('hello:1') && !isLocalArtifact(undefined))
  })

  it('parses cpu and memory quantities', () => {
    assert.equal(parseCpu('0.5'), 500)
    assert.equal(parseCpu(2), 2000)
    assert.equal(parseCpu('100m'), 100)
    assert.equal(parseCpu('x'), undefined)
    assert.equal(parseMemory('64Mi'), 64 * 1024 * 1024)
    assert.equal(parseMemory('1G'), 1e9)
    assert.equal(parseMemory(4194304), 4194304)
    assert.equal(parseMemory('1Ti'), undefined)
  })

  it('reads several YAML documents, and a bad one names the file, the document and the field', () => {
    const text = `name: web\ncommand: [/bin/sh, -c, "sleep 1"]\nreplicas: 2\n---\nkind: Workload\nname: db\ncommand: [/bin/true]\nmemory: 32Mi\n---\n`
    const ws = parseManifests(text, 'app.yaml')
    assert.deepEqual(
      ws.map((w) => [w.name, w.replicas, w.memory]),
      [
        ['web', 2, 128 * 1024 * 1024],
        ['db', 1, 32 * 1024 * 1024],
      ],
    )
    const bad = `name: web\ncommand: [x]\n---\nname: db\ncommand: [x]\nreplicas: many\n`
    assert.match(
      errorOf(() => parseManifests(bad, 'app.yaml')),
      /^app\.yaml document 2: replicas must be/,
    )
    assert.match(
      errorOf(() => parseManifests('name: [', 'x.yaml')),
      /^x\.yaml is not valid YAML/,
    )
    assert.match(
      errorOf(() => parseManifests('', 'x.yaml')),
      /holds no workload/,
    )
    assert.match(
      errorOf(() => parseManifests('- a\n- b\n', 'x.yaml')),
      /mapping of fields/,
    )
    assert.match(
      errorOf(() => parseManifests('name: a\ncommand: [x]\n---\nname: a\ncommand: [y]\n', 'x.yaml')),
      /appears twice/,
    )
  })

  it('round-trips get -o yaml through apply for any valid workload', () => {
    const arb = fc.record({
      name: fc.stringMatching(/^[a-z][a-z0-9]{0,10}$/),
      command: fc.array(
        fc.string({ minLength: 1, maxLength: 8 }).filter((s) => !s.includes('\0')),
        {
          minLength: 1,
          maxLength: 4,
        },
      ),
      replicas: fc.integer({ min: 0, max: 256 }),
      cpu: fc.oneof(fc.constant(0), fc.integer({ min: 10, max: 8000 })),
      memory: fc.integer({ min: 4 * 1024 * 1024, max: 2 ** 40 }),
      arch: fc.constantFrom(null, 'amd64', 'arm64'),
      artifact: fc.constantFrom(null, 'hello:1', 'bafyabc'),
      labels: fc.dictionary(fc.stringMatching(/^[a-z]{1,5}$/), fc.stringMatching(/^[a-z0-9]{0,5}$/), {
        maxKeys: 3,
      }),
      ports: fc.array(fc.integer({ min: 1, max: 65535 }), { maxLength: 3 }),
      service: fc.constantFrom(null, 'web'),
      restart: fc.constantFrom('always', 'on-failure', 'never'),
      env: fc.dictionary(
        fc.stringMatching(/^[A-Z_]{1,5}$/),
        fc.string({ maxLength: 6 }).filter((s) => !s.includes('\0')),
        {
          maxKeys: 3,
        },
      ),
      exclusive: fc.boolean(),
      stopped: fc.boolean(),
    })
    fc.assert(
      fc.property(arb, (w) => {
        const value = WorkloadValue.parse(w)
        assert.deepEqual(normalizeWorkload(toManifest(value)), value)
        assert.deepEqual(
          parseManifests(workloadsToYaml([value, { ...value, name: `${value.name}x` }]), 'f'),
          [value, { ...value, name: `${value.name}x` }],
        )
      }),
    )
  })

  it('makes valid container specs named <workload>-<index>, and hashes only what a replica runs', () => {
    const w = normalizeWorkload({ name: 'web', command: ['/bin/sh'], cpu: '0.5', env: { A: '1' } })
    const spec = ContainerSpec.parse(containerSpecOf(w, 2))
    assert.equal(spec.name, 'web-2')
    assert.equal(spec.processes[0]?.limits.cpuMillicores, 500)
    assert.equal(spec.processes[0]?.env.KM1S_REPLICA, '2')
    assert.equal(ContainerSpec.parse(containerSpecOf(w, 0, '/var/a')).artifactDir, '/var/a')
    assert.equal(specHash(w), specHash({ ...w, replicas: 9, stopped: true }))
    assert.notEqual(specHash(w), specHash({ ...w, env: { A: '2' } }))
    assert.deepEqual(parseReplicaName('my-web-12'), { workload: 'my-web', index: 12 })
    assert.equal(parseReplicaName('web'), undefined)
    assert.equal(parseReplicaName('web-01'), undefined)
  })
})
