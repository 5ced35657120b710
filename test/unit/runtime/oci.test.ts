import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { isKm1sError } from '../../../src/common/errors.ts'
import { presentSystemPaths } from '../../../src/runtime/host.ts'
import {
  type ContainerProcessSpec,
  cpuQuota,
  MASKED_PATHS,
  ociConfig,
  READONLY_PATHS,
  renderHostname,
  renderHosts,
  renderResolvConf,
} from '../../../src/runtime/oci.ts'

const MiB = 1024 * 1024

function spec(overrides: Partial<ContainerProcessSpec> = {}): ContainerProcessSpec {
  return {
    container: 'web-1',
    process: 'main',
    args: ['/usr/bin/python3', '-m', 'http.server'],
    rootfs: '/var/lib/km1s/rootfs',
    hostname: 'web-1',
    limits: { memoryBytes: 64 * MiB, cpuMillicores: 250, pids: 100 },
    systemPaths: ['/usr', '/bin', '/lib', '/etc/ssl/certs'],
    artifactDir: '/var/lib/km1s/artifacts/abc',
    files: {
      hosts: '/run/km1s/web-1/hosts',
      hostname: '/run/km1s/web-1/hostname',
      resolvConf: '/run/km1s/web-1/resolv.conf',
    },
    namespaces: { network: '/run/netns/km1s-web-1', uts: '/proc/4242/ns/uts', ipc: '/proc/4242/ns/ipc' },
    ...overrides,
  }
}

function refusal(input: unknown): string {
  try {
    ociConfig(input as ContainerProcessSpec)
  } catch (err) {
    assert.ok(isKm1sError(err), 'a Km1sError')
    assert.equal(err.code, 'ERR_INVALID_PROCESS_SPEC')
    assert.doesNotMatch(err.message, /\n/)
    return err.message
  }
  assert.fail('the spec was accepted')
}

describe('ociConfig', () => {
  it('makes new pid and mount namespaces and joins network, uts and ipc by path', () => {
    const config = ociConfig(spec())
    assert.deepEqual(config.linux.namespaces, [
      { type: 'pid' },
      { type: 'mount' },
      { type: 'network', path: '/run/netns/km1s-web-1' },
      { type: 'uts', path: '/proc/4242/ns/uts' },
      { type: 'ipc', path: '/proc/4242/ns/ipc' },
    ])
    // A joined UTS namespace keeps its own hostname: runtimes refuse to set one there.
    assert.equal(config.hostname, undefined)
    const fresh = ociConfig(spec({ namespaces: { network: 'new', uts: 'new', ipc: 'new' } }))
    assert.deepEqual(
      fresh.linux.namespaces.map((n) => [n.type, n.path]),
      ['pid', 'mount', 'network', 'uts', 'ipc'].map((t) => [t, undefined]),
    )
    assert.equal(fresh.hostname, 'web-1')
  })

  it('has a read-only root, no new privileges, no capabilities and the unprivileged default user', () => {
    const config = ociConfig(spec())
    assert.deepEqual(config.root, { path: '/var/lib/km1s/rootfs', readonly: true })
    assert.equal(config.process.noNewPrivileges, true)
    assert.deepEqual(config.process.user, { uid: 65534, gid: 65534, additionalGids: [] })
    for (const set of Object.values(config.process.capabilities)) assert.deepEqual(set, [])
    const withCap = ociConfig(
      spec({ capabilities: ['CAP_NET_BIND_SERVICE'], user: { uid: 1000, gid: 1000 } }),
    )
    assert.deepEqual(withCap.process.capabilities.ambient, ['CAP_NET_BIND_SERVICE'])
    assert.deepEqual(withCap.process.user, { uid: 1000, gid: 1000, additionalGids: [] })
    assert.match(refusal({ ...spec(), capabilities: ['CAP_SYS_ADMIN'] }), /capabilities\.0/)
  })

  it('converts the limits: bytes as they are, millicores to a CFS quota over a 100 ms period', () => {
    const { resources } = ociConfig(spec()).linux
    assert.deepEqual(resources.memory, { limit: 64 * MiB })
    assert.deepEqual(resources.cpu, { quota: 25_000, period: 100_000 })
    assert.deepEqual(resources.pids, { limit: 100 })
    assert.deepEqual(cpuQuota(1000), { quota: 100_000, period: 100_000 })
    assert.deepEqual(cpuQuota(2500), { quota: 250_000, period: 100_000 })
    assert.deepEqual(cpuQuota(10), { quota: 1_000, period: 100_000 })
    const noCpu = ociConfig(spec({ limits: { memoryBytes: 4 * MiB, pids: 1 } })).linux.resources
    assert.equal(noCpu.cpu, undefined)
  })

  it('binds every host path read-only; only /tmp (a private tmpfs) and the kernel filesystems are not binds', () => {
    const config = ociConfig(spec({ tmpBytes: 16 * MiB }))
    const binds = config.mounts.filter((m) => m.type === 'bind')
    assert.deepEqual(
      binds.map((m) => m.destination),
      ['/usr', '/bin', '/lib', '/etc/ssl/certs', '/app', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf'],
    )
    for (const m of binds) {
      assert.ok(m.options.includes('ro'), `${m.destination} is read-only`)
      assert.ok(m.options.includes('nosuid'), `${m.destination} is nosuid`)
    }
    assert.equal(binds.find((m) => m.destination === '/app')?.source, '/var/lib/km1s/artifacts/abc')
    assert.equal(
      binds.find((m) => m.destination === '/etc/resolv.conf')?.source,
      '/run/km1s/web-1/resolv.conf',
    )
    const tmp = config.mounts.find((m) => m.destination === '/tmp')
    assert.equal(tmp?.type, 'tmpfs')
    assert.ok(tmp?.options.includes(`size=${16 * MiB}`))
    assert.ok(!tmp?.options.includes('ro'))
    assert.ok(config.mounts.find((m) => m.destination === '/sys')?.options.includes('ro'))
    assert.deepEqual(
      config.mounts.filter((m) => m.type !== 'bind').map((m) => m.destination),
      ['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/tmp'],
    )
    const noApp = ociConfig(spec({ artifactDir: undefined }))
    assert.ok(!noApp.mounts.some((m) => m.destination === '/app'))
  })

  it('masks and write-protects the kernel interfaces runc does, and names the cgroup after km1s', () => {
    const config = ociConfig(spec())
    assert.deepEqual(config.linux.maskedPaths, MASKED_PATHS)
    assert.deepEqual(config.linux.readonlyPaths, READONLY_PATHS)
    assert.ok(config.linux.maskedPaths.includes('/proc/kcore'))
    assert.equal(config.linux.cgroupsPath, '/km1s/web-1/main')
    assert.equal(ociConfig(spec({ cgroupsPath: '/km1s-probe-12-1' })).linux.cgroupsPath, '/km1s-probe-12-1')
    assert.equal(config.ociVersion, '1.0.2')
    assert.deepEqual(config.process.rlimits, [{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }])
  })

  it('puts a default PATH first unless the spec sets one', () => {
    assert.deepEqual(ociConfig(spec({ env: { A: '1' } })).process.env, [
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'A=1',
    ])
    assert.deepEqual(ociConfig(spec({ env: { PATH: '/app/bin' } })).process.env, ['PATH=/app/bin'])
  })

  it('refuses invalid specs with one sentence naming the field', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ ...spec(), container: 'Web_1' }, /container: must be lowercase/],
      [{ ...spec(), container: '-web' }, /container:/],
      [{ ...spec(), process: '' }, /process:/],
      [{ ...spec(), args: [] }, /args: must name the program/],
      [
        { ...spec(), limits: { memoryBytes: 4 * MiB - 1, pids: 1 } },
        /limits\.memoryBytes: must be at least 4 MiB/,
      ],
      [{ ...spec(), limits: { memoryBytes: 4 * MiB, pids: 0 } }, /limits\.pids: must be at least 1/],
      [{ ...spec(), limits: { memoryBytes: 4 * MiB, pids: 1, cpuMillicores: 5 } }, /limits\.cpuMillicores/],
      [{ ...spec(), limits: { memoryBytes: 4 * MiB, pids: 1.5 } }, /limits\.pids/],
      [
        { ...spec(), namespaces: { network: 'km1s-web', uts: 'new', ipc: 'new' } },
        /namespaces\.network: must be an absolute path/,
      ],
      [{ ...spec(), env: { 'A=B': 'x' } }, /env\.A=B/],
      [{ ...spec(), rootfs: 'rootfs' }, /rootfs: must be an absolute path/],
      [{ ...spec(), systemPaths: ['/usr', '/tmp'] }, /systemPaths\.1: \/tmp is mounted by km1s/],
      [{ ...spec(), systemPaths: ['/usr', '/usr/'] }, /systemPaths\.1: \/usr is listed twice/],
      [
        { ...spec(), cgroupsPath: '/system.slice/x' },
        /cgroupsPath: must be an absolute path starting with \/km1s/,
      ],
      [{ ...spec(), cgroupsPath: '/km1s/../x' }, /cgroupsPath: must not contain/],
      [{ ...spec(), files: undefined }, /files:/],
    ]
    for (const [input, pattern] of cases) assert.match(refusal(input), pattern)
    assert.match(refusal(null), /^Invalid container process spec: spec: /)
  })
})

describe('renderers', () => {
  it('renders /etc/hosts with loopback names and the given entries', () => {
    assert.equal(
      renderHosts('web-1', [{ ip: '10.42.0.7', names: ['db-0', 'db-0.ctr.km1s.internal'] }]),
      '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb-1\n10.42.0.7\tdb-0 db-0.ctr.km1s.internal\n',
    )
    assert.throws(() => renderHosts('web-1', [{ ip: 'nope', names: ['a'] }]), /Invalid \/etc\/hosts entry/)
    assert.throws(() => renderHosts('Web 1'), /Invalid hostname/)
  })

  it('renders /etc/hostname and resolv.conf', () => {
    assert.equal(renderHostname('web-1'), 'web-1\n')
    assert.throws(() => renderHostname('web-1\nevil'), /Invalid hostname/)
    assert.equal(
      renderResolvConf({ nameservers: ['10.42.0.1'], search: ['km1s.internal'], options: ['ndots:1'] }),
      'nameserver 10.42.0.1\nsearch km1s.internal\noptions ndots:1\n',
    )
    assert.equal(renderResolvConf({ nameservers: ['::1'] }), 'nameserver ::1\n')
    assert.throws(() => renderResolvConf({ nameservers: [] }), /Invalid resolv\.conf: nameservers/)
  })

  it('keeps only the system paths present on the host', () => {
    assert.deepEqual(
      presentSystemPaths(['/usr', '/lib64', '/bin'], (p) => p !== '/lib64'),
      ['/usr', '/bin'],
    )
  })
})

const name = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/)
const absPath = fc
  .array(
    fc.stringMatching(/^[A-Za-z0-9_.-]{1,8}$/).filter((s) => s !== '.' && s !== '..'),
    { minLength: 1, maxLength: 4 },
  )
  .map((parts) => `/${parts.join('/')}`)
const nsSource = fc.oneof(fc.constant('new'), absPath)
const validSpec = fc.record({
  container: name,
  process: name,
  args: fc.array(
    fc.string().filter((s) => !s.includes('\0')),
    { minLength: 1, maxLength: 4 },
  ),
  env: fc.dictionary(
    fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,8}$/),
    fc.string().filter((s) => !s.includes('\0')),
  ),
  rootfs: absPath,
  hostname: name,
  limits: fc.record(
    {
      memoryBytes: fc.integer({ min: 4 * MiB, max: 2 ** 40 }),
      cpuMillicores: fc.integer({ min: 10, max: 64_000 }),
      pids: fc.integer({ min: 1, max: 1 << 22 }),
    },
    { requiredKeys: ['memoryBytes', 'pids'] },
  ),
  systemPaths: fc.uniqueArray(
    absPath.map((p) => `/s${p}`),
    { maxLength: 6 },
  ),
  artifactDir: fc.option(absPath, { nil: undefined }),
  files: fc.record({ hosts: absPath, hostname: absPath, resolvConf: absPath }),
  namespaces: fc.record({ network: nsSource, uts: nsSource, ipc: nsSource }),
})

describe('ociConfig laws', () => {
  it('any valid spec gives a config that survives JSON and mounts each destination once', () => {
    fc.assert(
      fc.property(validSpec, (input) => {
        const config = ociConfig(input)
        assert.deepEqual(JSON.parse(JSON.stringify(config)), config)
        const destinations = config.mounts.map((m) => m.destination)
        assert.equal(new Set(destinations).size, destinations.length)
        for (const m of config.mounts) if (m.type === 'bind') assert.ok(m.options.includes('ro'))
        assert.equal(config.root.readonly, true)
        const quota = config.linux.resources.cpu?.quota
        if (input.limits.cpuMillicores !== undefined) assert.equal(quota, input.limits.cpuMillicores * 100)
      }),
      { numRuns: 300 },
    )
  })
})
