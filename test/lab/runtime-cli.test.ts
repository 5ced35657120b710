// The runtime as a user meets it: a real agent in a lab node, driven only through the CLI — containers,
// logs (tail, process, follow), exec with and without a terminal, and bad input.
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { instanceId } from '../../src/runtime/names.ts'
import { KM1S, km1s, km1sOk, startAgent } from './cluster.ts'
import { createLab, type Lab, type LabNode } from './lab.ts'
import { census, isRoot, until } from './runtime-fixture.ts'

const run = promisify(execFile)

describe('runtime through the CLI', { skip: isRoot ? false : 'needs root' }, () => {
  let lab: Lab
  let node: LabNode
  let instance = ''
  const runDir = () => join(node.dataDir, '..', `${node.name}-run`)

  before(async () => {
    lab = await createLab({ nodes: 1, name: 'rtcli' })
    node = lab.node(1)
    await km1sOk(node, ['init', '--name', node.name])
    await startAgent(node, { runtime: 'oci' })
    instance = instanceId(JSON.parse(await km1sOk(node, ['status', '--json'])).id)
    const spec = join(lab.dir, 'web.json')
    await writeFile(
      spec,
      JSON.stringify({
        name: 'web',
        processes: [
          { name: 'main', args: ['/bin/sh', '-c', 'echo hello-from-web; exec sleep 600'] },
          { name: 'side', args: ['/bin/sh', '-c', 'while :; do echo tick; sleep 0.2; done'] },
        ],
      }),
    )
    await km1sOk(node, ['containers', 'create', '-f', spec])
  })

  after(async () => {
    try {
      await km1s(node, ['containers', 'rm', 'web'])
      await node?.stop()
    } finally {
      await lab?.down()
    }
    if (instance) {
      const left = census(instance, runDir())
      assert.deepEqual(Object.values(left).flat(), [], JSON.stringify(left))
    }
  })

  it('lists the container with its address and both processes running', async () => {
    const rows = JSON.parse(await km1sOk(node, ['containers', '--json']))
    assert.equal(rows.length, 1)
    assert.equal(rows[0].name, 'web')
    assert.equal(
      rows[0].state,
      'running',
      `${JSON.stringify(rows[0])}\n${await km1sOk(node, ['logs', 'web'])}\n${node.log().slice(-3000)}`,
    )
    assert.match(rows[0].ip, /^10\.42\.\d+\.\d+$/)
    const table = await km1sOk(node, ['containers'])
    assert.match(table, /web\s+running/)
  })

  it('shows logs by process and tail, and follows them', async () => {
    await until('main logged', async () =>
      (await km1sOk(node, ['logs', 'web', '--process', 'main'])).includes('hello-from-web'),
    )
    const tail = (await km1sOk(node, ['logs', 'web', '--process', 'side', '--tail', '1'])).trim().split('\n')
    assert.deepEqual(tail, ['tick'])
    const mixed = await km1sOk(node, ['logs', 'web', '--since', '1h'])
    assert.match(mixed, /main \| hello-from-web/)
    const follower = spawn(KM1S, ['--data-dir', node.dataDir, 'logs', 'web', '-f', '--process', 'side'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    follower.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    try {
      await until('ticks followed as they come', () => (out.match(/tick/g) ?? []).length >= 8, 10_000)
    } finally {
      follower.kill('SIGINT')
    }
  })

  it('execs a command and returns its status; with -it a real terminal', async () => {
    const r = await km1s(node, ['exec', 'web', '--', '/bin/sh', '-c', 'echo in-container; hostname; exit 3'])
    assert.equal(r.code, 3)
    assert.match(r.stdout, /in-container\nweb\n/)
    const cmd = `${KM1S} --data-dir ${node.dataDir} exec -it web -- /bin/sh -c 'test -t 0 && echo HAS-TTY; exit 4'`
    const tty = await run('script', ['-qec', cmd, '/dev/null'], { timeout: 20_000 }).then(
      (x) => ({ code: 0, out: x.stdout }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    )
    assert.equal(tty.code, 4, tty.out)
    assert.match(tty.out, /HAS-TTY/)
  })

  it('refuses bad input with one sentence and loses nothing', async () => {
    const nope = await km1s(node, ['logs', 'nope'])
    assert.notEqual(nope.code, 0)
    assert.match(nope.stderr.trim(), /^[^\n]*nope[^\n]*\.$/)
    const bad = join(lab.dir, 'bad.json')
    await writeFile(bad, '{ "name": "x", ')
    const r = await km1s(node, ['containers', 'create', '-f', bad])
    assert.notEqual(r.code, 0)
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    const invalid = join(lab.dir, 'invalid.json')
    await writeFile(invalid, JSON.stringify({ name: 'Bad_Name', processes: [] }))
    const v = await km1s(node, ['containers', 'create', '-f', invalid])
    assert.notEqual(v.code, 0)
    assert.match(v.stderr, /name/)
    const rows = JSON.parse(await km1sOk(node, ['containers', '--json']))
    assert.deepEqual(
      rows.map((x: { name: string }) => x.name),
      ['web'],
    )
  })

  it('removes the container and everything it had', async () => {
    await km1sOk(node, ['containers', 'rm', 'web'])
    assert.deepEqual(JSON.parse(await km1sOk(node, ['containers', '--json'])), [])
    const c = census(instance, runDir(), node.netns)
    assert.deepEqual(Object.values(c).flat(), [], JSON.stringify(c))
  })
})
