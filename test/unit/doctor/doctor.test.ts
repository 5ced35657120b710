import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { describe, it } from 'node:test'
import {
  availableControllers,
  missingControllers,
  parseMounts,
  parseProcCgroups,
} from '../../../src/doctor/cgroup.ts'
import { runCommand } from '../../../src/doctor/exec.ts'
import {
  controllersFix,
  detectCgroupLayout,
  detectHostFlavour,
  runDoctor,
} from '../../../src/doctor/index.ts'
import { staleDoctorNamespaces } from '../../../src/doctor/probe.ts'
import { checkCgroupControllers } from '../../../src/doctor/verdicts.ts'

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// Debian 10-era systemd in legacy mode: only v1 hierarchies, co-mounted controllers, a named systemd one.
const V1_MOUNTS = `sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,nodev,noexec,relatime,net_cls,net_prio 0 0
`

// This machine (PLATFORM.md): v1 controllers on a tmpfs, cgroup2 at /sys/fs/cgroup/unified holding hugetlb.
const HYBRID_MOUNTS = `proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
`

// Raspberry Pi OS bookworm: pure cgroup v2, and a stock Pi kernel leaves memory out of cgroup.controllers.
const PI_MOUNTS = `/dev/mmcblk0p2 / ext4 rw,noatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=340460k,nr_inodes=85115,mode=755 0 0
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw,relatime,fmask=0022,dmask=0022,codepage=437,iocharset=ascii 0 0
`
const PI_CONTROLLERS = 'cpuset cpu io pids\n'
const PI_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
const PI_PROC_CGROUPS = `#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t61\t1
cpu\t0\t61\t1
cpuacct\t0\t61\t1
blkio\t0\t61\t1
memory\t0\t61\t0
devices\t0\t61\t1
freezer\t0\t61\t1
pids\t0\t61\t1
`

const piHost = detectHostFlavour({
  osRelease: PI_OS_RELEASE,
  deviceTreeModel: 'Raspberry Pi 4 Model B Rev 1.4',
  firmwareCmdlineExists: true,
  arch: 'arm64',
})
const debianHost = detectHostFlavour({
  osRelease: PI_OS_RELEASE,
  deviceTreeModel: '',
  firmwareCmdlineExists: false,
  arch: 'x64',
})

describe('detectCgroupLayout', () => {
  it('reads a pure v1 layout and ignores named hierarchies and mount flags', () => {
    const info = detectCgroupLayout(V1_MOUNTS)
    assert.equal(info.layout, 'v1')
    assert.deepEqual(info.v1Controllers, ['cpu', 'cpuacct', 'memory', 'net_cls', 'net_prio', 'pids'])
    assert.deepEqual(info.v2Controllers, [])
    assert.equal(info.v2Mount, null)
    assert.deepEqual(missingControllers(info), [])
  })

  it('reads the hybrid layout of this kind of machine', () => {
    const info = detectCgroupLayout(HYBRID_MOUNTS, 'hugetlb\n')
    assert.equal(info.layout, 'hybrid')
    assert.equal(info.v2Mount, '/sys/fs/cgroup/unified')
    assert.deepEqual(info.v1Controllers, [
      'blkio',
      'cpu',
      'cpuacct',
      'cpuset',
      'devices',
      'freezer',
      'memory',
      'pids',
    ])
    assert.deepEqual(info.v2Controllers, ['hugetlb'])
    assert.ok(availableControllers(info).includes('hugetlb'))
    assert.deepEqual(missingControllers(info), [])
  })

  it('reads a pure v2 layout (Raspberry Pi OS bookworm) and sees memory missing', () => {
    const info = detectCgroupLayout(PI_MOUNTS, PI_CONTROLLERS)
    assert.equal(info.layout, 'v2')
    assert.equal(info.v2Mount, '/sys/fs/cgroup')
    assert.deepEqual(info.v1Controllers, [])
    assert.deepEqual(info.v2Controllers, ['cpu', 'cpuset', 'io', 'pids'])
    assert.deepEqual(missingControllers(info), ['memory'])
  })

  it('says when nothing is mounted, and prefers /sys/fs/cgroup over a bind mount of cgroup2', () => {
    assert.equal(detectCgroupLayout('proc /proc proc rw 0 0\n').mounted, false)
    const info = detectCgroupLayout(
      'cgroup2 /var/lib/x/sys/fs/cgroup cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n',
      'cpu memory pids',
    )
    assert.equal(info.v2Mount, '/sys/fs/cgroup')
    assert.equal(info.mounted, true)
  })

  it('unescapes octal sequences in mount points', () => {
    const [entry] = parseMounts('tmpfs /mnt/with\\040space tmpfs rw 0 0\n')
    assert.equal(entry?.target, '/mnt/with space')
  })
})

describe('hints', () => {
  const piFacts = {
    layout: 'v2' as const,
    kernelControllers: parseProcCgroups(PI_PROC_CGROUPS),
    kernelCmdline: '',
  }

  it('tells a Raspberry Pi without the memory controller to edit cmdline.txt and reboot', () => {
    const fix = controllersFix(['memory'], piHost, piFacts)
    assert.match(fix, /cgroup_enable=memory cgroup_memory=1/)
    assert.match(fix, /\/boot\/firmware\/cmdline\.txt/)
    assert.match(fix, /reboot/)
    assert.doesNotMatch(fix, /grub/i)
  })

  it('uses /boot/cmdline.txt on a Pi that predates bookworm', () => {
    const oldPi = detectHostFlavour({
      osRelease: 'ID=raspbian\n',
      deviceTreeModel: '',
      firmwareCmdlineExists: false,
      arch: 'arm',
    })
    assert.equal(oldPi.raspberryPi, true)
    assert.match(controllersFix(['memory'], oldPi, piFacts), /\/boot\/cmdline\.txt/)
  })

  it('tells Debian to use GRUB for a disabled memory controller, naming the Pi way too', () => {
    assert.equal(debianHost.raspberryPi, false)
    const fix = controllersFix(['memory'], debianHost, { ...piFacts, kernelCmdline: 'cgroup_disable=memory' })
    assert.match(fix, /GRUB_CMDLINE_LINUX/)
    assert.match(fix, /update-grub/)
    assert.match(fix, /Raspberry Pi OS: .*cgroup_enable=memory cgroup_memory=1/)
  })

  it('mounts a v1 controller the kernel has but nobody mounted', () => {
    const fix = controllersFix(['pids'], debianHost, {
      layout: 'hybrid',
      kernelControllers: new Map([['pids', true]]),
      kernelCmdline: '',
    })
    assert.match(fix, /mount -t cgroup -o pids cgroup \/sys\/fs\/cgroup\/pids/)
  })

  it('suggests removing cgroup_disable=X for another controller disabled on the command line', () => {
    const fix = controllersFix(['pids'], debianHost, {
      layout: 'v2',
      kernelControllers: new Map([['pids', false]]),
      kernelCmdline: 'root=/dev/sda1 cgroup_disable=pids quiet',
    })
    assert.match(fix, /remove `cgroup_disable=pids`/)
  })

  it('suggests the distribution kernel when the controller is not built in', () => {
    const fix = controllersFix(['pids'], debianHost, {
      layout: 'v2',
      kernelControllers: new Map(),
      kernelCmdline: '',
    })
    assert.match(fix, /apt-get install -y --no-install-recommends linux-image-amd64/)
  })

  it('fails the controllers check on a stock Pi and passes it on the hybrid machine', () => {
    const pi = checkCgroupControllers(detectCgroupLayout(PI_MOUNTS, PI_CONTROLLERS), piHost, piFacts)
    assert.equal(pi.level, 'fail')
    assert.match(pi.detail, /memory/)
    assert.match(pi.fix ?? '', /cgroup_enable=memory cgroup_memory=1/)
    const hybrid = checkCgroupControllers(detectCgroupLayout(HYBRID_MOUNTS, 'hugetlb'), debianHost, piFacts)
    assert.equal(hybrid.level, 'ok')
    assert.equal(hybrid.fix, undefined)
  })
})

describe('runDoctor on this machine', () => {
  it('reports every check with a level and a detail, a fix when not ok, and leaves no namespace', async () => {
    const report = await runDoctor()
    assert.ok(report.checks.length >= 14)
    const ids = report.checks.map((c) => c.id)
    assert.equal(new Set(ids).size, ids.length, 'check ids are unique')
    for (const id of [
      'root',
      'ip',
      'netns',
      'veth',
      'bridge',
      'tun',
      'nftables',
      'wireguard',
      'node',
      'disk',
    ]) {
      assert.ok(ids.includes(id), `has a ${id} check`)
    }
    for (const c of report.checks) {
      assert.ok(['ok', 'warn', 'fail'].includes(c.level), `${c.id} has a level`)
      assert.ok(c.detail.trim().length > 0, `${c.id} has a detail`)
      assert.ok(!c.detail.includes('\n'), `${c.id} detail is one line`)
      if (c.level !== 'ok') assert.ok((c.fix ?? '').length > 0, `${c.id} (${c.level}) has a fix`)
    }
    assert.equal(report.ok, !report.checks.some((c) => c.level === 'fail'))
    const node = report.checks.find((c) => c.id === 'node')
    assert.equal(node?.level, 'ok')
    // Another process's doctor may be mid-run; a leftover is one whose process is gone, or ours.
    const left = (await readdir('/run/netns').catch(() => [] as string[])).filter((n) =>
      n.startsWith('km1s-doctor'),
    )
    assert.deepEqual(staleDoctorNamespaces(left, process.pid, isAlive), [])
  })

  it('removes a namespace a killed doctor left behind', {
    skip: process.geteuid?.() !== 0 && 'needs root',
  }, async () => {
    // Above the kernel's highest possible pid (2^22), so no live process can own it.
    const leftover = 'km1s-doctor-4194305'
    assert.equal((await runCommand('ip', ['netns', 'add', leftover])).code, 0)
    try {
      await runDoctor()
      assert.ok(!(await readdir('/run/netns')).includes(leftover))
    } finally {
      await runCommand('ip', ['netns', 'del', leftover])
    }
  })

  it('never throws for a data directory that does not exist', async () => {
    const report = await runDoctor({ dataDir: '/nonexistent/km1s/data' })
    const disk = report.checks.find((c) => c.id === 'disk')
    assert.ok(disk)
    assert.match(disk.detail, /measured at \//)
  })
})
