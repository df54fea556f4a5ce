"""`python -m uringloop script.py [args]` and `python -m uringloop -m module [args]`: any
asyncio program, its asyncio.run(), asyncio.Runner() and new_event_loop() calls included, runs
on uringloop, as __main__ with its own argv; --stats prints each loop's ring statistics."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROGRAM = '''
import asyncio, sys
import helper  # a module beside the script: the script's directory heads sys.path

async def main():
    await asyncio.sleep(0.001)
    return type(asyncio.get_running_loop()).__module__ + '.' + type(asyncio.get_running_loop()).__name__

if __name__ == '__main__':
    print('argv', sys.argv[1:], helper.NAME)
    print('run', asyncio.run(main()))
    if hasattr(asyncio, 'Runner'):   # 3.11+
        with asyncio.Runner() as runner:
            print('runner', runner.run(main()))
    loop = asyncio.new_event_loop()
    print('new_event_loop', loop.run_until_complete(main()))
    loop.close()
    if hasattr(asyncio, 'Runner'):
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            print('own factory', runner.run(main()))
    sys.exit(int(sys.argv[1]))
'''
HAS_RUNNER = sys.version_info >= (3, 11)


def run(args, cwd, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, '-m', 'uringloop', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, **kwargs)


def write_program(folder):
    (folder / 'prog').mkdir()
    (folder / 'prog' / 'helper.py').write_text('NAME = "helper"\n')
    script = folder / 'prog' / 'script.py'
    script.write_text(PROGRAM)
    return script


def test_script_runs_on_uringloop_with_its_argv(tmp_path):
    script = write_program(tmp_path)
    proc = run([str(script), '7', '--flag', '-m'], cwd=tmp_path)
    assert proc.returncode == 7, proc.stderr
    expected = [
        "argv ['7', '--flag', '-m'] helper",
        'run uringloop.Loop',
        'runner uringloop.Loop',
        'new_event_loop uringloop.Loop',
        'own factory asyncio.unix_events._UnixSelectorEventLoop',
    ]
    if not HAS_RUNNER:
        expected = [line for line in expected if not line.startswith(('runner', 'own factory'))]
    assert proc.stdout.splitlines() == expected
    assert proc.stderr == ''


def test_stats_at_exit(tmp_path):
    script = write_program(tmp_path)
    proc = run(['--stats', str(script), '0'], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    # asyncio.run, the Runner and new_event_loop made three loops (two before 3.11: no
    # Runner); the program's own factory made the fourth, which is not uringloop's.
    count = 3 if HAS_RUNNER else 2
    assert [line.split(':')[1].strip() for line in lines] == [
        f'loop {n} (closed)' for n in range(1, count + 1)], proc.stderr
    for line in lines:
        fields = dict(word.split('=') for word in line.split(': ', 2)[2].split())
        assert int(fields['submitted']) > 0 and fields['submitted'] == fields['completed']
        assert int(fields['iterations']) > 0


def test_module_and_errors(tmp_path):
    (tmp_path / 'mymod.py').write_text(textwrap.dedent('''
        import asyncio, sys
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(__name__, sys.argv[1:], asyncio.run(main()))
        raise ValueError('from the program')
    '''))
    proc = run(['-m', 'mymod', 'a', '--b'], cwd=tmp_path)
    assert proc.stdout == "__main__ ['a', '--b'] Loop\n"
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith('ValueError: from the program')

    missing = run([str(tmp_path / 'nope.py')], cwd=tmp_path)
    assert missing.returncode == 2 and "can't open file" in missing.stderr
    no_script = run(['--stats'], cwd=tmp_path)
    assert no_script.returncode == 2 and 'no script given' in no_script.stderr
    helped = run(['--help'], cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith('usage: python -m uringloop')
