// Logs and exec of a container on another node (/km1s/remote/1.0.0), as a user meets them: three agents
// with the oci runtime, a container made on n1 with `km1s containers create`, everything asked from n3.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { instanceId } from '../../src/runtime/names.ts'
import {
  type Cluster,
  client,
  KM1S,
  km1s,
  km1sOk,
  startAgent,
  startCluster,
  waitForAlive,
} from './cluster.ts'
import type { LabNode } from './lab.ts'
import { census, isRoot, until } from './runtime-fixture.ts'

const COUNTER = 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done'

describe('logs and exec across nodes', { skip: isRoot ? false : 'needs root' }, () => {
  let cluster: Cluster
  let n1: LabNode
  let n3: LabNode
  let instance1 = ''

  const openStreams = async (node: LabNode) => (await client(node).status()).remote.open

  before(async () => {
    cluster = await startCluster(3, { name: 'remote', agent: { runtime: 'oci' } })
    ;[n1, , n3] = cluster.nodes as [LabNode, LabNode, LabNode]
    await waitForAlive(cluster.nodes, cluster.nodes)
    instance1 = instanceId((await client(n1).status()).id)
    const spec = join(cluster.lab.dir, 'c.json')
    await writeFile(
      spec,
      JSON.stringify({ name: 'c', processes: [{ name: 'main', args: ['/bin/sh', '-c', COUNTER] }] }),
    )
    await km1sOk(n1, ['containers', 'create', '-f', spec])
  })

  after(async () => {
    try {
      if (n1 && n1.pid() === undefined) await startAgent(n1, { runtime: 'oci' })
      if (n1) await km1s(n1, ['containers', 'rm', 'c'])
      for (const n of cluster?.nodes ?? []) await n.stop()
    } finally {
      await cluster?.lab.down()
    }
    if (instance1) {
      const left = census(instance1, join(n1.dataDir, '..', `${n1.name}-run`))
      assert.deepEqual(Object.values(left).flat(), [], JSON.stringify(left))
    }
  })

  it('lists every node’s containers, and one node’s', async () => {
    const all = JSON.parse(await km1sOk(n3, ['containers', '--all', '--json']))
    assert.deepEqual(
      all.map((c: { node: string; name: string }) => `${c.node}/${c.name}`),
      [`${n1.name}/c`],
    )
    assert.match(
      await km1sOk(n3, ['containers', '--node', n1.name]),
      new RegExp(`${n1.name}\\s+c\\s+running`),
    )
    assert.deepEqual(JSON.parse(await km1sOk(n3, ['containers', '--json'])), [])
  })

  it('reads and follows logs from another node; Ctrl-C ends the follow on both nodes', async () => {
    const tail = (await km1sOk(n3, ['logs', 'c', '--tail', '2'])).trim().split('\n')
    assert.equal(tail.length, 2)
    assert.match(tail[0] ?? '', /^line \d+$/)
    const filtered = await km1sOk(n3, ['logs', 'c', '--process', 'main', '--since', '1h', '--tail', '1'])
    assert.match(filtered, /^line \d+\n$/)
    const wrong = await km1s(n3, ['logs', 'c', '--process', 'side'])
    assert.equal(wrong.stderr.trim(), 'Container c has no process named side; it has main.')
    const follower = spawn(KM1S, ['--data-dir', n3.dataDir, 'logs', 'c', '-f', '--tail', '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    follower.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    const exited = new Promise<number | null>((r) =>
      follower.once('exit', (code, signal) => r(code ?? (signal ? 130 : null))),
    )
    try {
      await until('new lines followed as they come', () => (out.match(/line \d+/g) ?? []).length >= 4, 10_000)
    } finally {
      follower.kill('SIGINT')
    }
    await exited
    const numbers = (out.match(/line (\d+)/g) ?? []).map((l) => Number(l.slice(5)))
    assert.ok(
      numbers.every((n, i) => i === 0 || n === (numbers[i - 1] as number) + 1),
      out,
    )
    await until(
      'no remote stream left open on n1 and n3',
      async () => (await openStreams(n1)) + (await openStreams(n3)) === 0,
      10_000,
    )
  })

  it('execs in a container on another node: output, status, stdin', async () => {
    const r = await km1s(n3, ['exec', 'c', '--', '/bin/sh', '-c', 'echo hi; hostname; exit 3'])
    assert.equal(r.code, 3, r.stderr)
    assert.equal(r.stdout, 'hi\nc\n')
    const piped = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(KM1S, [
        '--data-dir',
        n3.dataDir,
        'exec',
        '-i',
        'c',
        '--',
        '/bin/sh',
        '-c',
        'tr a-z A-Z',
      ])
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
      })
      child.once('exit', (code) => resolve({ code, out }))
      child.stdin.end('piped through\n')
    })
    assert.deepEqual(piped, { code: 0, out: 'PIPED THROUGH\n' })
  })

  it('gives exec -it a terminal on another node: resize and Ctrl-C reach the program', async () => {
    const ch = await client(n3).exec({
      container: 'c',
      args: [
        '/bin/sh',
        '-c',
        'tty; stty size; while read x; do s=$(stty size); echo "size $s"; [ "$s" = "43 132" ] && break; done; trap "echo got-int; exit 7" INT; echo ready; read y',
      ],
      tty: true,
      cols: 100,
      rows: 30,
      env: { TERM: 'xterm' },
    })
    let out = ''
    ch.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    await until('the first size', () => /30 100/.test(out), 10_000).catch((err) => {
      throw new Error(`${err.message}; the terminal showed ${JSON.stringify(out)}`)
    })
    assert.match(out, /\/dev\/pts\/\d+/)
    ch.resize(132, 43)
    // Each Enter makes the program print its size again, until the resize has reached it.
    await until(
      'the new size',
      async () => {
        ch.stdin.write('\r')
        await new Promise((r) => setTimeout(r, 200))
        return /size 43 132/.test(out)
      },
      10_000,
    )
    await until('the trap', () => /ready/.test(out), 10_000)
    ch.stdin.write('\x03')
    const exit = await ch.exited
    assert.match(out, /got-int/)
    assert.equal(exit.code, 7, out)
  })

  it('exec -it from the CLI under a real terminal on another node', async () => {
    const cmd = `${KM1S} --data-dir ${n3.dataDir} exec -it c -- /bin/sh -c 'test -t 0 && echo HAS-TTY; exit 4'`
    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] })
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
      })
      child.once('exit', (code) => resolve({ code, out }))
      setTimeout(() => child.kill('SIGKILL'), 15_000).unref()
    })
    assert.equal(r.code, 4, r.out)
    assert.match(r.out, /HAS-TTY/)
  })

  it('says in one sentence that a container is nowhere, within a few seconds', async () => {
    const t0 = Date.now()
    const r = await km1s(n3, ['logs', 'nope'])
    assert.equal(r.code, 1)
    assert.match(r.stderr.trim(), /^There is no container named nope on any node[^\n]*\.$/)
    assert.ok(Date.now() - t0 < 8_000, `${Date.now() - t0} ms`)
    const e = await km1s(n3, ['exec', 'nope', '--', 'true'])
    assert.match(e.stderr, /There is no container named nope/)
  })

  it('names the node when the node that runs the container is down; a follow from it ends with an error', async () => {
    const follower = spawn(KM1S, ['--data-dir', n3.dataDir, 'logs', 'c', '-f', '--tail', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    follower.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    follower.stderr.on('data', (d: Buffer) => {
      err += d.toString()
    })
    const exited = new Promise<number | null>((r) => follower.once('exit', (code) => r(code)))
    await until('the follow to run', () => /line \d+/.test(out), 10_000)
    await n1.stop()
    const code = await Promise.race([
      exited,
      new Promise((r) => setTimeout(() => r('still running'), 10_000)),
    ])
    if (code === 'still running') follower.kill('SIGKILL')
    assert.equal(code, 1, err)
    assert.match(err.trim(), /^The agent ended the stream before its end[^\n]*\.$/)
    const t0 = Date.now()
    const r = await km1s(n3, ['logs', 'c'])
    assert.equal(r.code, 1)
    assert.match(
      r.stderr.trim(),
      new RegExp(`^Container c is on node ${n1.name}, which cannot be reached[^\\n]*\\.$`),
    )
    assert.ok(Date.now() - t0 < 10_000, `${Date.now() - t0} ms`)
    const e = await km1s(n3, ['exec', 'c', '--', 'true'])
    assert.match(e.stderr, new RegExp(`node ${n1.name}`))
    const all = await km1s(n3, ['containers', '--all'])
    assert.equal(all.code, 0, all.stderr)
    assert.match(all.stderr, new RegExp(`^km1s: no containers from node ${n1.name}: `))
  })
})
