// Moving a node to another subnet, at the runtime's level (what NodeNetwork calls after a lost subnet
// conflict): the bridge and every container get the new addresses while their processes keep running, and
// an agent that starts with records of another subnet re-addresses them.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createLogger } from '../../src/common/logger.ts'
import { netnsName } from '../../src/network/container-net.ts'
import { detectOciRuntime } from '../../src/runtime/detect.ts'
import { ContainerRuntime } from '../../src/runtime/runtime.ts'
import { isRoot, type RuntimeHarness, runtimeHarness } from './runtime-fixture.ts'

function ipJson(netns: string, args: string[]): Array<Record<string, unknown>> {
  return JSON.parse(execFileSync('ip', ['-n', netns, '-j', ...args], { encoding: 'utf8' }))
}

function inet(netns: string, dev: string): string[] {
  const [link] = ipJson(netns, ['addr', 'show', 'dev', dev]) as Array<{
    addr_info: Array<{ family: string; local: string; prefixlen: number }>
  }>
  return (link?.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`)
}

describe('moving to another subnet', { skip: isRoot ? false : 'needs root' }, () => {
  let h: RuntimeHarness
  const spec = (name: string) => ({ name, processes: [{ name: 'main', args: ['/bin/sleep', '600'] }] })

  before(async () => {
    h = await runtimeHarness('oci')
    await h.runtime.create(spec('mva'))
    await h.runtime.create(spec('mvb'))
  })

  after(async () => {
    await h?.destroy()
  })

  function check(name: string, subnetPrefix: string): void {
    const st = h.runtime.get(name)
    assert.ok(st?.ip?.startsWith(subnetPrefix), `${name}: ${st?.ip}`)
    const ns = netnsName(h.instance, name)
    assert.deepEqual(inet(ns, 'eth0'), [`${st?.ip}/24`])
    const routes = ipJson(ns, ['route', 'show', 'default']) as Array<{ gateway?: string }>
    assert.equal(routes[0]?.gateway, `${subnetPrefix}1`)
    const dir = h.names.containerDir(name)
    assert.match(
      readFileSync(join(dir, 'hosts'), 'utf8'),
      new RegExp(`^${st?.ip?.replace(/\./g, '\\.')}\\t`, 'm'),
    )
    assert.match(readFileSync(join(dir, 'resolv.conf'), 'utf8'), new RegExp(`nameserver ${subnetPrefix}1`))
    // Reachable from the node's side at the new address.
    execFileSync('nsenter', [
      `--net=/run/netns/${h.hostNetns}`,
      'ping',
      '-c',
      '1',
      '-W',
      '2',
      st?.ip as string,
    ])
  }

  it('setSubnet moves the bridge and every container, keeping host parts and processes', async () => {
    const before = h.runtime.list().map((c) => ({ ip: c.ip, pid: c.processes[0]?.pid }))
    assert.deepEqual(
      before.map((b) => b.ip),
      ['10.42.0.2', '10.42.0.3'],
    )
    await h.runtime.setSubnet('10.42.77.0/24')
    assert.deepEqual(inet(h.hostNetns as string, 'km1s0'), ['10.42.77.1/24'])
    const after = h.runtime.list().map((c) => ({ ip: c.ip, pid: c.processes[0]?.pid }))
    assert.deepEqual(
      after.map((a) => a.ip),
      ['10.42.77.2', '10.42.77.3'],
    )
    assert.deepEqual(
      after.map((a) => a.pid),
      before.map((b) => b.pid),
      'the processes kept running',
    )
    check('mva', '10.42.77.')
    check('mvb', '10.42.77.')
    // A container made after the move gets an address of the new subnet.
    const c = await h.runtime.create(spec('mvc'))
    assert.equal(c.ip, '10.42.77.4')
  })

  it('an agent started with another subnet re-addresses the recorded containers', async () => {
    await h.runtime.stop()
    const moved = new ContainerRuntime({
      kind: 'oci',
      names: h.names,
      log: createLogger({ level: 'silent' }),
      oci: await detectOciRuntime(),
      hostNetns: h.hostNetns,
      subnet: '10.42.88.0/24',
      adoptPollMs: 50,
    })
    h.runtime = moved
    await moved.start()
    assert.deepEqual(
      moved.list().map((c) => [c.name, c.ip, c.state]),
      [
        ['mva', '10.42.88.2', 'running'],
        ['mvb', '10.42.88.3', 'running'],
        ['mvc', '10.42.88.4', 'running'],
      ],
    )
    check('mva', '10.42.88.')
  })
})
