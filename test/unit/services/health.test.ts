import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import pino from 'pino'
import { workloadFromFlags } from '../../../src/cli/workload-flags.ts'
import { normalizeWorkload, toManifest } from '../../../src/scheduler/workload.ts'
import { HealthMonitor, INITIAL_HEALTH, probe, stepHealth } from '../../../src/services/health.ts'
import type { HealthValue } from '../../../src/state/record.ts'

const spec = { healthyAfter: 2, unhealthyAfter: 2, restartAfter: 4 }
const log = pino({ level: 'silent' })

describe('health state machine', () => {
  it('starts unhealthy, serves after healthyAfter successes, leaves after unhealthyAfter failures', () => {
    let s = INITIAL_HEALTH
    s = stepHealth(s, true, spec).state
    assert.equal(s.healthy, false)
    s = stepHealth(s, true, spec).state
    assert.equal(s.healthy, true)
    s = stepHealth(s, false, spec).state
    assert.equal(s.healthy, true)
    s = stepHealth(s, true, spec).state
    s = stepHealth(s, false, spec).state
    s = stepHealth(s, false, spec).state
    assert.equal(s.healthy, false)
  })

  it('asks for a restart after exactly restartAfter failures in a row, then counts again', () => {
    fc.assert(
      fc.property(
        fc.array(fc.boolean(), { maxLength: 60 }),
        fc.integer({ min: 0, max: 5 }),
        (results, restartAfter) => {
          const sp = { healthyAfter: 1, unhealthyAfter: 1, restartAfter }
          let s = INITIAL_HEALTH
          let run = 0
          for (const ok of results) {
            const r = stepHealth(s, ok, sp)
            run = ok ? 0 : run + 1
            const expect = restartAfter > 0 && run === restartAfter
            assert.equal(r.restart, expect)
            if (expect) run = 0
            assert.equal(r.state.healthy, ok, 'thresholds of 1: the last result decides')
            s = r.state
          }
        },
      ),
    )
  })
})

describe('health probes', () => {
  it('http: 2xx/3xx healthy, 5xx and a closed port not, a slow answer times out', async () => {
    const server = createServer((req, res) => {
      if (req.url === '/slow') return setTimeout(() => res.end('late'), 1000)
      res.statusCode = req.url === '/ok' ? 200 : req.url === '/moved' ? 302 : 500
      res.end()
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const port = (server.address() as { port: number }).port
    const h = (path: string, p = port): HealthValue => ({
      kind: 'http',
      port: p,
      path,
      intervalMs: 1000,
      timeoutMs: 200,
      healthyAfter: 1,
      unhealthyAfter: 1,
      restartAfter: 0,
    })
    const t = { ip: '127.0.0.1', container: 'x' }
    try {
      assert.equal(await probe(h('/ok'), t, undefined, log), true)
      assert.equal(await probe(h('/moved'), t, undefined, log), true)
      assert.equal(await probe(h('/bad'), t, undefined, log), false)
      assert.equal(await probe(h('/slow'), t, undefined, log), false)
      assert.equal(await probe({ ...h('/'), kind: 'tcp' }, t, undefined, log), true)
      server.close()
      server.closeAllConnections()
      assert.equal(await probe({ ...h('/'), kind: 'tcp' }, t, undefined, log), false)
      assert.equal(await probe(h('/ok'), t, undefined, log), false)
    } finally {
      server.close()
    }
  })
})

describe('health flags and manifest fields', () => {
  it('run flags become a check with defaults; the manifest round-trips', () => {
    const w = workloadFromFlags('web', ['/bin/true'], {
      label: [],
      env: [],
      port: ['8080'],
      service: 'web',
      healthHttp: '/healthz',
      healthInterval: '500ms',
      healthRestartAfter: '5',
    })
    assert.deepEqual(w.health, {
      kind: 'http',
      port: 8080,
      path: '/healthz',
      intervalMs: 500,
      timeoutMs: 500,
      healthyAfter: 1,
      unhealthyAfter: 1,
      restartAfter: 5,
    })
    assert.deepEqual(normalizeWorkload(toManifest(w)), w)
    const plain = normalizeWorkload({ name: 'a', command: ['/bin/true'] })
    assert.equal('health' in plain, false, 'no check: no field, so older specs keep their hash')
  })

  it('errors name the field', () => {
    const bad =
      (health: unknown, ports: number[] = [80]) =>
      () =>
        normalizeWorkload({ name: 'a', command: ['/bin/true'], ports, health })
    assert.throws(bad({ http: '/x', interval: 'soon' }), /health\.interval must be a duration/)
    assert.throws(bad({ tcp: true }, []), /health\.port is needed/)
    assert.throws(bad({ http: '/x', tcp: 80 }), /health must have exactly one of tcp, http or exec/)
    assert.throws(bad({ http: 'x' }), /health\.http must be a path/)
    assert.throws(bad({ http: '/x', retries: 3 }), /health\.retries is not a health field/)
    assert.throws(bad({ exec: ['/bin/true'], unhealthyAfter: 0 }), /health\.unhealthyAfter must be 1 to 100/)
    assert.throws(
      () => normalizeWorkload({ name: 'a', command: ['/bin/true'], headless: true }),
      /headless needs a service/,
    )
  })
})

describe('exec probe', () => {
  it('runs the command the runtime prepares: exit 0 healthy, else not, a hang killed at the timeout', async () => {
    const runtime = {
      prepareExec: async (req: { args: string[] }) => ({
        argv: req.args,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
        cwd: '/',
        pidFile: null,
        cleanup: async () => {},
      }),
    }
    const h = (command: string[]): HealthValue => ({
      kind: 'exec',
      command,
      intervalMs: 1000,
      timeoutMs: 300,
      healthyAfter: 1,
      unhealthyAfter: 1,
      restartAfter: 0,
    })
    const t = { ip: '127.0.0.1', container: 'x' }
    assert.equal(await probe(h(['/bin/sh', '-c', 'exit 0']), t, runtime, log), true)
    assert.equal(await probe(h(['/bin/sh', '-c', 'exit 3']), t, runtime, log), false)
    const t0 = Date.now()
    assert.equal(await probe(h(['/bin/sleep', '5']), t, runtime, log), false)
    assert.ok(Date.now() - t0 < 3000)
    assert.equal(await probe(h(['/nonexistent']), t, runtime, log), false)
  })
})

describe('HealthMonitor', () => {
  it('a new replica starts unhealthy; one running before the agent keeps serving', () => {
    const created = (ms: number) => new Date(ms).toISOString()
    const containers = [
      {
        name: 'web-0',
        state: 'running',
        createdAt: created(Date.now() - 60_000),
        ip: '127.0.0.1',
        processes: [],
      },
    ]
    let w = normalizeWorkload({
      name: 'web',
      command: ['/bin/true'],
      ports: [1],
      health: { tcp: true, interval: '1m' },
    })
    const changes: string[] = []
    const monitor = new HealthMonitor({
      runtime: {
        list: () => containers,
        get: (n: string) => containers.find((c) => c.name === n),
        onChange: () => () => {},
      } as never,
      workload: () => w,
      onChange: (name) => changes.push(name),
      restart: () => {},
      logger: log,
    })
    monitor.start()
    try {
      assert.equal(monitor.isHealthy('web-0'), true, 'adopted at start')
      containers.push({
        name: 'web-1',
        state: 'running',
        createdAt: created(Date.now() + 1),
        ip: '127.0.0.1',
        processes: [],
      })
      monitor.sync()
      assert.equal(monitor.isHealthy('web-1'), false, 'new: not before its first passed check')
      // A changed check (a new spec) does not reset the replicas that run the old one.
      w = normalizeWorkload({ ...toManifest(w), health: { tcp: true, interval: '2m' } })
      monitor.sync()
      assert.equal(monitor.isHealthy('web-0'), true)
      assert.equal(monitor.isHealthy('web-1'), false)
      assert.equal(
        monitor.isHealthy('other-0'),
        false,
        'a replica of a workload with a check, not running here',
      )
    } finally {
      monitor.stop()
    }
  })
})

describe('HealthMonitor and a replica made again', () => {
  it("does not let the old container's verdict vouch for the new one of the same name", () => {
    const old = {
      name: 'web-0',
      state: 'running',
      createdAt: new Date(Date.now() - 60_000).toISOString(),
      ip: '127.0.0.1',
      processes: [],
    }
    const containers = [old]
    const w = normalizeWorkload({
      name: 'web',
      command: ['/bin/true'],
      ports: [1],
      health: { tcp: true, interval: '1m' },
    })
    const monitor = new HealthMonitor({
      runtime: {
        list: () => containers,
        get: (n: string) => containers.find((c) => c.name === n),
        onChange: () => () => {},
      } as never,
      workload: () => w,
      onChange: () => {},
      restart: () => {},
      logger: log,
    })
    monitor.start()
    try {
      assert.equal(monitor.isHealthy('web-0'), true)
      containers[0] = { ...old, createdAt: new Date(Date.now() + 5).toISOString() }
      assert.equal(monitor.isHealthy('web-0'), false, 'checked again before it serves')
    } finally {
      monitor.stop()
    }
  })
})
