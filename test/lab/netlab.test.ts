// Tests of the lab itself, with plain processes: reachability, partitions, loss, multicast, process control,
// and that nothing is left behind after down(), SIGTERM or SIGKILL of the owner.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { createLab, type Lab, type LabNode, sweepStaleLabs, waitFor } from './lab.ts'

const isRoot = process.getuid?.() === 0
const needsRoot = isRoot
  ? false
  : 'the lab needs root (network namespaces, nftables): run the lab tests as root'

// A TCP connect to a closed port: a refusal proves the peer answered, a timeout that frames were dropped.
// (No ICMP: iputils-ping is not installed on these machines.)
const PROBE = `const s = require('node:net').connect({ host: process.argv[1], port: 9 })
s.setTimeout(1000, () => process.exit(2))
s.on('connect', () => process.exit(0))
s.on('error', (e) => process.exit(e.code === 'ECONNREFUSED' ? 0 : 1))`

async function reaches(from: LabNode, to: LabNode): Promise<boolean> {
  const result = await from.exec([process.execPath, '-e', PROBE, to.address], { timeoutMs: 5000 })
  return result.code === 0
}

// Prints every datagram that arrives on the mDNS group, as an mDNS responder would receive queries.
const MDNS_LISTENER = `const s = require('node:dgram').createSocket({ type: 'udp4', reuseAddr: true })
s.on('message', (m, from) => console.log('got', m.toString(), 'from', from.address))
s.bind(5353, () => { s.addMembership('224.0.0.251'); console.log('listening') })`

async function mdnsSend(from: LabNode, message: string): Promise<void> {
  const script = `const s = require('node:dgram').createSocket('udp4')
s.send(process.argv[1], 5353, '224.0.0.251', (e) => { if (e) throw e; s.close() })`
  const result = await from.exec([process.execPath, '-e', script, message], { timeoutMs: 5000 })
  assert.equal(result.code, 0, `sending from ${from.name} failed: ${result.stderr}`)
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))
  } catch {
    return false
  }
}

/** The pid a shell wrote to `file`, once it is there and complete. */
function readPid(file: string): number | undefined {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : ''
  return text.endsWith('\n') ? Number(text) : undefined
}

function namespacesOf(id: string): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => name.startsWith(`km1s-${id}-`))
}

test('waitFor times out with what it waited for and the last error', async () => {
  let calls = 0
  const value = await waitFor('three calls', async () => ++calls >= 3 && calls, { intervalMs: 1 })
  assert.equal(value, 3)
  await assert.rejects(
    waitFor(
      'the impossible',
      async () => {
        throw new Error('boom')
      },
      { timeoutMs: 50, intervalMs: 10 },
    ),
    /^Error: timed out after 50ms waiting for the impossible; last error: boom$/,
  )
})

describe('a lab of three nodes', { skip: needsRoot }, () => {
  let lab: Lab
  let n1: LabNode
  let n2: LabNode
  let n3: LabNode

  before(async () => {
    lab = await createLab({ nodes: 3, name: 'test' })
    n1 = lab.node('n1')
    n2 = lab.node(2)
    n3 = lab.node('3')
  })
  after(() => lab?.down())

  test('names, addresses and data directories', () => {
    assert.deepEqual(
      lab.nodes.map((node) => [node.name, node.address]),
      [
        ['n1', '198.18.0.11'],
        ['n2', '198.18.0.12'],
        ['n3', '198.18.0.13'],
      ],
    )
    for (const node of lab.nodes) {
      assert.match(node.netns, /km1s/)
      assert.ok(fs.statSync(node.dataDir).isDirectory())
      assert.equal(node.socket, `${node.dataDir}/km1s.sock`)
      assert.ok(node.dataDir.startsWith(`${lab.dir}/`))
    }
    assert.deepEqual(namespacesOf(lab.id).sort(), [lab.lanNetns, n1.netns, n2.netns, n3.netns].sort())
    assert.throws(() => lab.node(4), /has no node 4/)
  })

  test('a node sees only its own address and routes only the lab subnet and multicast', async () => {
    const addresses = await n1.exec(['ip', '-4', '-o', 'addr', 'show'])
    assert.equal(addresses.code, 0)
    assert.match(addresses.stdout, /lo\s+inet 127\.0\.0\.1\/8/)
    assert.match(addresses.stdout, /eth0\s+inet 198\.18\.0\.11\/24/)
    const routes = await n1.exec(['ip', '-4', 'route', 'show'])
    assert.doesNotMatch(routes.stdout, /default/)
    assert.match(routes.stdout, /224\.0\.0\.0\/4 dev eth0/)
  })

  test('partition cuts A from B in both directions and heal restores', async () => {
    assert.ok(await reaches(n1, n2), 'n1 reaches n2')
    assert.ok(await reaches(n1, n3), 'n1 reaches n3')
    await lab.partition([n1], [n2, n3])
    const [n1n2, n2n1, n2n3] = await Promise.all([reaches(n1, n2), reaches(n2, n1), reaches(n2, n3)])
    assert.equal(n1n2, false, 'n1 must not reach n2')
    assert.equal(n2n1, false, 'n2 must not reach n1')
    assert.equal(n2n3, true, 'n2 reaches n3 on its side')
    await lab.heal()
    assert.ok(await reaches(n1, n2), 'n1 reaches n2 after heal')
  })

  test('loss 100 % on a node drops its frames; loss 0 removes it', async () => {
    await lab.loss(100, [n2])
    const [n1n2, n1n3] = await Promise.all([reaches(n1, n2), reaches(n1, n3)])
    assert.equal(n1n2, false, 'n1 must not reach n2')
    assert.equal(n1n3, true, 'n1 still reaches n3')
    await lab.loss(0)
    assert.ok(await reaches(n1, n2), 'n1 reaches n2 without loss')
    await assert.rejects(lab.loss(101), /from 0 to 100/)
  })

  test('mDNS multicast crosses the bridge, and a partition cuts it', async () => {
    await n2.start([process.execPath, '-e', MDNS_LISTENER])
    await waitFor('the listener', async () => n2.log().includes('listening'))
    await mdnsSend(n1, 'hello')
    await waitFor('hello on n2', async () => n2.log().includes('got hello from 198.18.0.11'))
    await lab.partition([n1], [n2])
    await mdnsSend(n1, 'cut')
    await mdnsSend(n3, 'other-side')
    await waitFor('n3 on n2', async () => n2.log().includes('got other-side from 198.18.0.13'))
    assert.doesNotMatch(n2.log(), /got cut/)
    await lab.heal()
    await n2.kill()
  })

  test('start, pid, log, kill, stop and exec', async () => {
    await n3.start(['sh', '-c', 'echo to-stdout; echo to-stderr >&2; exec sleep 1000'])
    const pid = n3.pid()
    assert.ok(pid !== undefined && alive(pid))
    assert.equal(fs.readlinkSync(`/proc/${pid}/ns/net`), `net:[${fs.statSync(`/run/netns/${n3.netns}`).ino}]`)
    await assert.rejects(n3.start(['sleep', '1']), /already runs/)
    await waitFor('the output in agent.log', async () =>
      /to-stdout[\s\S]*to-stderr|to-stderr[\s\S]*to-stdout/.test(n3.log()),
    )
    await n3.kill()
    assert.equal(n3.pid(), undefined)
    assert.equal(alive(pid), false)
    await n3.kill() // nothing runs: a no-op

    await n3.start(['sleep', '1000'], { KM1S_TEST: '1' })
    const second = n3.pid()
    assert.ok(second !== undefined)
    // start() returns once the process is in the namespace, which may be just before nsenter execs sleep
    await waitFor('sleep with its environment', async () =>
      /(^|\0)KM1S_TEST=1\0/.test(fs.readFileSync(`/proc/${second}/environ`, 'utf8')),
    )
    await n3.stop()
    assert.equal(alive(second), false)

    assert.deepEqual(await n3.exec(['sh', '-c', 'echo out; echo err >&2; exit 3']), {
      code: 3,
      stdout: 'out\n',
      stderr: 'err\n',
    })
    assert.equal((await n3.exec(['sleep', '5'], { timeoutMs: 200 })).code, 124)
  })

  test('addNode joins the same LAN', async () => {
    const n4 = await lab.addNode()
    assert.equal(n4.name, 'n4')
    assert.equal(n4.address, '198.18.0.14')
    assert.ok(await reaches(n4, n1))
    assert.ok(await reaches(n1, n4))
  })
})

describe('cleanup', { skip: needsRoot }, () => {
  test('down removes processes, namespaces and the directory, and is idempotent', async () => {
    const lab = await createLab({ nodes: 2 })
    const node = lab.node(1)
    // the shell's child is not the started process: down() must find it through the namespace
    await node.start(['sh', '-c', `sleep 1000 & echo $! > ${node.dataDir}/child.pid; wait`])
    const child = await waitFor('the child pid', async () => readPid(`${node.dataDir}/child.pid`))
    const pid = node.pid()
    assert.ok(pid !== undefined && alive(pid) && alive(child))
    assert.equal(namespacesOf(lab.id).length, 3)
    await lab.down()
    assert.deepEqual(namespacesOf(lab.id), [])
    assert.equal(fs.existsSync(lab.dir), false)
    assert.equal(alive(pid), false)
    assert.equal(alive(child), false)
    await lab.down()
    await assert.rejects(lab.partition([], []), /is down/)
  })

  // A child Node process owns a lab with a shell in n1 and the shell's `sleep` (which no pdeathsig covers).
  const OWNER = `import fs from 'node:fs'
const { createLab, waitFor } = await import(${JSON.stringify(new URL('./lab.ts', import.meta.url).href)})
const lab = await createLab({ nodes: 2, name: 'owner' })
const node = lab.node(1)
const pidFile = node.dataDir + '/sleep.pid'
await node.start(['sh', '-c', 'sleep 1000 & echo $! > ' + pidFile + '; wait'])
const sleepPid = await waitFor('sleep', async () => {
  const text = fs.readFileSync(pidFile, 'utf8')
  return text.endsWith('\\n') && Number(text)
})
console.log(JSON.stringify({ id: lab.id, dir: lab.dir, pids: [node.pid(), sleepPid] }))
setInterval(() => {}, 1000)`

  interface Owned {
    id: string
    dir: string
    pids: number[]
  }

  /** Starts an owner and hands it to `body`; whatever happens, the owner is gone afterwards. */
  async function withOwner(
    body: (
      owned: Owned,
      signal: (name: NodeJS.Signals) => Promise<[number | null, string | null]>,
    ) => Promise<void>,
  ): Promise<void> {
    // pdeathsig: should this test process die, the owner takes its lab down too
    const argv = ['--pdeathsig', 'SIGTERM', process.execPath, '--input-type=module', '-e', OWNER]
    const owner = spawn('setpriv', argv, { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise<[number | null, string | null]>((resolve) =>
      owner.on('exit', (code, signal) => resolve([code, signal])),
    )
    let out = ''
    owner.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk
    })
    try {
      const line = await waitFor(
        'the owner to report its lab',
        async () => out.includes('\n') && out.split('\n')[0],
        {
          timeoutMs: 10_000,
          intervalMs: 20,
        },
      )
      const owned = JSON.parse(line) as Owned
      assert.equal(namespacesOf(owned.id).length, 3)
      for (const pid of owned.pids) assert.ok(alive(pid), `pid ${pid} runs`)
      await body(owned, (name) => {
        owner.kill(name)
        return exited
      })
    } finally {
      if (owner.exitCode === null && owner.signalCode === null) {
        owner.kill('SIGKILL')
        await exited
        await sweepStaleLabs()
      }
    }
  }

  function assertGone(owned: Owned): void {
    assert.deepEqual(namespacesOf(owned.id), [])
    assert.equal(fs.existsSync(owned.dir), false)
    for (const pid of owned.pids) assert.equal(alive(pid), false, `pid ${pid} is gone`)
  }

  test('SIGTERM to the owner takes its lab down before it exits', async () => {
    await withOwner(async (owned, signal) => {
      assert.deepEqual(await signal('SIGTERM'), [143, null])
      assertGone(owned)
    })
  })

  test('after SIGKILL of the owner, sweepStaleLabs removes what it left', async () => {
    await withOwner(async (owned, signal) => {
      assert.deepEqual(await signal('SIGKILL'), [null, 'SIGKILL'])
      const [, sleepPid = 0] = owned.pids
      assert.ok(alive(sleepPid), 'the orphaned sleep still runs until the sweep')
      assert.equal(namespacesOf(owned.id).length, 3)
      assert.ok((await sweepStaleLabs()).includes(owned.id), "the sweep reports the dead owner's lab")
      assertGone(owned)
    })
  })
})
